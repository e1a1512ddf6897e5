"""Tiling arithmetic and batching: coverage, weights, tiled == whole for a pointwise model, shared batches."""

import itertools

import pytest
import torch

from unetkit.infer.batching import BatchRunner, Job, run_all
from unetkit.infer.tiling import blend_weights, oversized_tile_note, small_tile_note, tile_grid, tile_starts


@pytest.mark.parametrize(
    "size, tile, overlap, expected",
    [
        (100, 100, 25, [0]),
        (40, 100, 25, [0]),  # smaller than a tile: one tile, the image is padded
        (110, 64, 32, [0, 23, 46]),  # nnU-Net's worked example: evenly spread, last one ends at the edge
        (1918, 512, 128, [0, 352, 703, 1054, 1406]),
        (200, 64, 0, [0, 45, 91, 136]),
    ],
)
def test_tile_starts(size, tile, overlap, expected):
    starts = tile_starts(size, tile, overlap)
    assert starts == expected
    assert starts[-1] + tile == max(size, tile)
    assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))  # the overlap is a minimum


@pytest.mark.parametrize("h, w", [(1280, 1918), (640, 959), (37, 700), (513, 512), (10, 10)])
def test_tiles_cover_every_pixel(h, w):
    tile, overlap = 128, 32
    cover = torch.zeros(max(h, tile), max(w, tile), dtype=torch.int32)
    for y, x in tile_grid(h, w, tile, overlap):
        assert y + tile <= cover.shape[0] and x + tile <= cover.shape[1]
        cover[y : y + tile, x : x + tile] += 1
    assert (cover[:h, :w] >= 1).all()


def test_bad_tile_settings_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(100, 64, 64)
    with pytest.raises(ValueError, match="tile must be positive"):
        tile_starts(100, 0, 0)


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_blend_weights_are_positive_and_normalized(mode):
    w = blend_weights(64, mode)
    assert w.shape == (64, 64) and w.dtype == torch.float32
    assert (w > 0).all() and w.max() == 1.0
    if mode == "gaussian":
        assert w[32, 32] > w[16, 32] > w[16, 16] > w[0, 0] == pytest.approx(1e-3)  # centre most, edges a floor
        assert torch.equal(w, w.T) and torch.equal(w, w.flip(0))
    else:
        assert (w == 1).all()


def pointwise(x: torch.Tensor) -> torch.Tensor:
    """A 'model' whose every output pixel depends on its own input pixel only."""
    return (x[:, :1] * 2.0 - x[:, 1:2] + 0.25 * x[:, 2:3]).float()


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_tiled_prediction_equals_whole_image_for_a_pointwise_model(blend):
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(3, h, w, generator=g) for h, w in [(150, 230), (64, 64), (40, 300), (97, 61)]]
    whole = run_all(BatchRunner(pointwise, 1, batch=1), [Job(i, x) for i, x in enumerate(images)])
    tiled = run_all(
        BatchRunner(pointwise, 1, batch=5, tile=64, overlap=20, blend=blend), [Job(i, x) for i, x in enumerate(images)]
    )
    assert [j.key for j in tiled] == [0, 1, 2, 3]  # in order
    for a, b in zip(whole, tiled, strict=True):
        assert a.prob.shape == b.prob.shape == (1, *images[a.key].shape[1:])
        torch.testing.assert_close(b.prob, a.prob, rtol=0, atol=1e-6)
        assert torch.equal(a.prob > 0.5, b.prob > 0.5)


def test_tiles_from_several_images_share_batches():
    shapes = []

    def recording(x):
        shapes.append(tuple(x.shape))
        return pointwise(x)

    images = [torch.randn(3, 100, 100) for _ in range(3)]  # 4 tiles of 64 each, 12 tiles in all
    done = run_all(BatchRunner(recording, 1, batch=8, tile=64, overlap=16), [Job(i, x) for i, x in enumerate(images)])
    assert shapes == [(8, 3, 64, 64), (4, 3, 64, 64)]  # the first call mixes all three images
    assert [j.key for j in done] == [0, 1, 2]


def test_static_engines_get_full_batches_and_whole_mode_groups_sizes():
    shapes = []

    def recording(x):
        shapes.append(tuple(x.shape))
        return pointwise(x)

    runner = BatchRunner(recording, 1, batch=4, static_shapes=True)
    sizes = [(32, 48), (32, 48), (16, 16), (32, 48)]
    done = run_all(runner, [Job(i, torch.randn(3, *s)) for i, s in enumerate(sizes)])
    assert [j.key for j in done] == [0, 1, 2, 3]
    assert shapes == [(4, 3, 32, 48), (4, 3, 16, 16), (4, 3, 32, 48)]  # padded to 4, same sizes together
    assert [tuple(j.prob.shape) for j in done] == [(1, *s) for s in sizes]


def test_tta_averages_the_mirrored_prediction_mirrored_back():
    """A 'model' that sees its neighbour to the left is not mirror-symmetric: TTA averages its prediction with
    that of the mirrored image, mirrored back, whole or tiled, and a mirror-symmetric model is unchanged."""

    def leftward(x: torch.Tensor) -> torch.Tensor:
        return pointwise(x) + 0.5 * pointwise(torch.roll(x, 1, dims=-1))

    g = torch.Generator().manual_seed(0)
    images = [torch.randn(3, 40, 70, generator=g), torch.randn(3, 40, 70, generator=g)]
    plain = run_all(BatchRunner(leftward, 1, batch=2), [Job(i, x) for i, x in enumerate(images)])
    tta = run_all(BatchRunner(leftward, 1, batch=2, tta=True), [Job(i, x) for i, x in enumerate(images)])
    for job, base, x in zip(tta, plain, images, strict=True):
        mirrored = torch.sigmoid(leftward(x.flip(-1)[None])[0]).flip(-1)
        torch.testing.assert_close(job.prob, (base.prob + mirrored) / 2, rtol=0, atol=1e-6)
        assert not torch.allclose(job.prob, base.prob)
    calls = []

    def symmetric(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return pointwise(x)

    tiled = run_all(BatchRunner(symmetric, 1, batch=4, tile=32, overlap=8, tta=True), [Job(0, images[0])])
    whole = run_all(BatchRunner(pointwise, 1, batch=1), [Job(0, images[0])])
    torch.testing.assert_close(tiled[0].prob, whole[0].prob, rtol=0, atol=1e-6)
    assert len(calls) == 4 and calls[0] == calls[1] == (4, 3, 32, 32)  # each batch twice, at the same shape


def test_a_tile_larger_than_every_image_is_said_with_what_it_costs():
    sizes = [(64, 96), (60, 90), (70, 105)]  # (height, width) model inputs
    assert oversized_tile_note(sizes, 512) == (
        "--tile 512 is larger than every image's model input (at most 105 wide, 70 high): each runs as one tile "
        "padded to 512x512, 3% of it image at best; leave out --tile (whole images) or give a smaller one"
    )
    assert oversized_tile_note(sizes, 100) == ""  # the widest image needs two tiles
    assert small_tile_note(256, (512, 384)).startswith("--tile 256 is smaller than the 512x384 windows")
    assert small_tile_note(512, (512, 384)) == small_tile_note(256, None) == small_tile_note(0, (512, 512)) == ""
    assert oversized_tile_note(sizes, 105) == "" and oversized_tile_note([], 512) == ""
