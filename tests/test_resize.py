"""Size rules (--scale, --size, --max-side) from training to every inference path, and size-bucketed batches."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_meta, run_cli
from unetkit.core import load_checkpoint
from unetkit.core.meta import MetaError, ModelMeta, ResizeRule
from unetkit.core.preprocess import input_size, model_input
from unetkit.export.profile import default_shape
from unetkit.infer.predictor import Predictor
from unetkit.train.data.buckets import BUCKET_RATIO, BucketBatchSampler, padding_fraction, same_size_batches
from unetkit.train.data.synth import random_car, render


def test_resize_rules_by_hand():
    assert ResizeRule(scale=0.5).output_size(1280, 1918) == (640, 959)
    assert ResizeRule("size", size=(256, 384)).output_size(1280, 1918) == (256, 384)
    assert ResizeRule("size", size=(256, 384)).output_size(40, 30) == (256, 384)  # any aspect, any size
    assert ResizeRule("max_side", max_side=512).output_size(1072, 1920) == (286, 512)  # 1072 * 512/1920 = 285.9
    assert ResizeRule("max_side", max_side=512).output_size(487, 332) == (512, 349)  # small images grow
    assert ResizeRule("max_side", max_side=512).describe() == "max side 512"
    assert ResizeRule("size", size=(256, 384)).describe() == "size 256x384 (HxW)"
    with pytest.raises(MetaError, match="resize 'size' needs a positive height and width"):
        ResizeRule("size")
    with pytest.raises(MetaError, match="resize 'fit'"):
        ResizeRule("fit")


def test_meta_records_the_rule_and_old_descriptions_mean_scale():
    meta = make_meta(resize="max_side", max_side=320, scale=1.0)
    again = ModelMeta.from_dict(meta.to_dict())
    assert again.resize_rule == ResizeRule("max_side", max_side=320) and again == meta
    sized = ModelMeta.from_dict({**make_meta().to_dict(), "resize": "size", "input_size": [64, 96]})
    assert sized.input_size == (64, 96) and sized.resize_rule.output_size(1280, 1918) == (64, 96)
    old = {k: v for k, v in make_meta().to_dict().items() if k not in ("resize", "input_size", "max_side")}
    assert ModelMeta.from_dict(old).resize_rule == ResizeRule(scale=0.5)
    with pytest.raises(MetaError, match="resize 'max_side' needs a positive side"):
        make_meta(resize="max_side")
    with pytest.raises(MetaError, match=r"input_size \[64\] \(needs a height and a width\)"):  # not an IndexError
        ModelMeta.from_dict({**make_meta().to_dict(), "resize": "size", "input_size": [64]})


def test_model_input_and_exports_follow_the_rule():
    pixels = torch.randint(0, 256, (3, 120, 200), dtype=torch.uint8)
    for meta, expected in [
        (make_meta(scale=0.5), (60, 100)),
        (make_meta(resize="size", input_size=(32, 48)), (32, 48)),
        (make_meta(resize="max_side", max_side=100), (60, 100)),
    ]:
        assert tuple(model_input(pixels, meta).shape[-2:]) == expected == input_size(120, 200, meta)
    # export's default TensorRT profile: tuned for a 1918x1280 image by the rule; a longest-side model takes
    # portrait images too, so its maximum is square
    _, opt, hi = default_shape(make_meta(resize="max_side", max_side=640))
    assert opt == (427, 640) and hi == (640, 640)
    _, opt, hi = default_shape(make_meta(resize="size", input_size=(256, 384)))
    assert opt == (256, 384) and hi == (512, 512)  # wide enough for the default tile as well


def test_bucketed_batches_bound_padding_and_cover_every_image_once():
    rng = np.random.default_rng(0)
    # Kvasir-like: long side 512 after --max-side, short sides anywhere from 280 to 512, both orientations
    sizes = [(int(s), 512) if rng.random() < 0.8 else (512, int(s)) for s in rng.integers(280, 513, 200)]
    g = torch.Generator().manual_seed(0)
    sampler = BucketBatchSampler(sizes, 8, g)
    state = g.get_state()
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for batch in batches for i, _ in batch) == list(range(200))
    assert all(1 <= len(b) <= 8 for b in batches)
    padding = [padding_fraction([sizes[i] for i, _ in b]) for b in batches]
    assert max(padding) <= 1 - 1 / BUCKET_RATIO**2  # the bound every batch keeps (17 %)
    unbucketed = [list(range(i, i + 8)) for i in range(0, 200, 8)]  # the same sizes in arrival order
    assert np.mean([padding_fraction([sizes[i] for i in b]) for b in unbucketed]) > 5 * np.mean(padding)
    assert len(batches) <= 200 / 8 + 8  # few partial batches
    g.set_state(state)
    assert list(sampler) == batches  # resumable: only the generator's state decides
    assert list(sampler) != batches  # and the next epoch differs
    one_size = BucketBatchSampler([(64, 96)] * 20, 8, torch.Generator().manual_seed(1))
    assert sorted(len(b) for b in one_size) == [4, 8, 8]


def test_training_on_mixed_sizes_with_max_side_and_inference_applies_it(tmp_path):
    rng = np.random.default_rng(3)
    for i, (w, h) in enumerate([(160, 96), (96, 160), (200, 120), (120, 120), (180, 100), (100, 150)]):
        image, mask = render(random_car(rng), rng, w, h)
        Image.fromarray(image).save(tmp_path / f"img{i}.png")
        Image.fromarray(mask).save(tmp_path / f"img{i}_seg.png")
    proc = run_cli("unet-train", "--images", tmp_path, "--masks", tmp_path, "--mask-suffix", "_seg", "--out",
                   tmp_path / "run", "--max-side", "64", "--epochs", "1", "--batch-size", "2", "--base-channels", "4",
                   "--workers", "0", "--device", "cpu", "--no-progress", check=True)  # fmt: skip
    assert "folders layout" in proc.stdout and "max side 64" in proc.stdout
    _, meta = load_checkpoint(tmp_path / "run/best.pth")
    assert meta.resize == "max_side" and meta.max_side == 64 and meta.layout == "folders"
    with Predictor(tmp_path / "run/best.pth", device="cpu") as predictor:
        prob = predictor.predict(tmp_path / "img1.png", return_prob=True)
        assert prob.shape == (1, 160, 96)  # back at the image's own size
        x = model_input(torch.from_numpy(np.array(Image.open(tmp_path / "img1.png"))).permute(2, 0, 1), meta)
        assert tuple(x.shape[-2:]) == (64, 38)  # what the engine was fed: the longer side 64, aspect kept


def test_same_size_batches_never_mix_sizes():
    sizes = [(32, 48), (32, 48), (32, 48), (40, 48), (32, 48), (40, 48), (40, 48)]
    assert same_size_batches(sizes, 2) == [[0, 1], [2], [3], [4], [5, 6]]
    assert same_size_batches(sizes, 8) == [[0, 1, 2], [3], [4], [5, 6]]
    assert same_size_batches([], 4) == []


def test_eval_of_mixed_sizes_scores_as_inference_whatever_the_batch_size(tmp_path):
    """--eval runs images of one size together, unpadded: padding a smaller image to its batch's largest
    would change the predictions near its edges, so the scores would depend on --batch-size and differ from
    the masks unet-infer writes."""
    from unetkit.core.checkpoint import save_checkpoint
    from unetkit.core.metrics import confusion_counts
    from unetkit.core.model import UNet, UNetConfig
    from unetkit.train.data.layouts import FolderSpec
    from unetkit.train.evaluate import EvalSettings, evaluate_checkpoint

    rng = np.random.default_rng(5)
    for i, (w, h) in enumerate([(96, 64), (64, 96), (96, 64), (80, 80), (96, 64), (72, 56)]):
        image, mask = render(random_car(rng), rng, w, h)
        Image.fromarray(image).save(tmp_path / f"img{i}.png")
        Image.fromarray(mask).save(tmp_path / f"img{i}_seg.png")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "best.pth", UNet(UNetConfig(n_classes=1, base_channels=4)).eval(),
                    make_meta(scale=1.0))  # fmt: skip
    folders = FolderSpec(tmp_path, tmp_path, mask_suffix="_seg")
    scores = {}
    for batch in (1, 6):
        settings = EvalSettings(folders=folders, batch_size=batch, device="cpu", workers=0, progress=False)
        report = evaluate_checkpoint(tmp_path / "best.pth", tmp_path, settings)
        scores[batch] = {s.name: s.counts for s in report.images}
    assert scores[1].keys() == scores[6].keys() and len(scores[1]) == 6
    with Predictor(tmp_path / "best.pth", device="cpu") as predictor:
        for name, counts in scores[6].items():
            assert torch.equal(counts, scores[1][name]), name
            truth = torch.from_numpy(np.array(Image.open(tmp_path / name.replace(".png", "_seg.png"))) > 0)
            mask = torch.from_numpy(predictor.predict(tmp_path / name))
            assert torch.equal(counts, confusion_counts(mask, truth.to(torch.uint8), 1)), name
