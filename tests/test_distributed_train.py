"""Training under torchrun: the pure decisions, then real `torchrun --standalone` runs with Gloo on loopback."""

import hashlib
import json
import re
import shutil

import pytest
import torch

from conftest import error_lines, run_cli, run_torchrun
from unetkit.core import UNet, UNetConfig, save_checkpoint
from unetkit.core.checkpoint import read_checkpoint
from unetkit.core.cli import peer_stopped
from unetkit.core.distributed import DistEnv, rank_device, torchrun_env
from unetkit.core.errors import UnetkitError
from unetkit.train.data.buckets import BucketBatchSampler
from unetkit.train.data.synth import write_synthetic
from unetkit.train.distributed import ShardedBatchSampler, padded_shard, sync_bn_decision, val_shard
from unetkit.train.evaluate import EvalSettings, evaluate_checkpoint

TORCHRUN = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "node0",
            "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x"}  # fmt: skip
TINY = ["--base-channels", "4", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--no-progress",
        "--scale", "0.5", "--lr", "3e-3", "--dist-timeout", "2"]  # fmt: skip
#: The two-process runs also train the architecture and optimization options: deep supervision reaches the model
#: through DDP's forward (a keyword argument), every extra head and gate must stay identical across the ranks, and
#: accumulated batches skip DDP's all-reduce (no_sync) but for the one that steps, and the weight average (saved
#: as the checkpoint's weights) must be the same on every rank.
OPTIONS = ["--attention", "--deep-supervision", "--optimizer", "adamw", "--warmup-epochs", "1", "--accumulate", "2",
           "--clip-grad", "1", "--ema", "0.9"]  # fmt: skip


# ---- pure decisions ---------------------------------------------------------------------------------------------
def test_torchrun_env_is_read_from_the_environment():
    assert torchrun_env({"PATH": "/bin"}) is None  # started alone: training as it always was
    assert torchrun_env(TORCHRUN) == DistEnv(rank=1, world_size=4, local_rank=1, local_world_size=2)
    single = {**TORCHRUN, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    assert torchrun_env(single) == DistEnv(0, 1, 0, 1)  # torchrun with one process: a valid smoke test


@pytest.mark.parametrize(
    "change, message",
    [
        ({"MASTER_PORT": None}, "sets RANK but not MASTER_PORT"),
        ({"LOCAL_RANK": None, "MASTER_ADDR": None}, "not LOCAL_RANK, MASTER_ADDR"),
        ({"RANK": "one"}, "RANK='one' is not a whole number"),
        ({"RANK": "4"}, "RANK=4 with WORLD_SIZE=4"),
        ({"LOCAL_RANK": "2"}, "LOCAL_RANK=2 with LOCAL_WORLD_SIZE=2"),
    ],
)
def test_a_broken_torchrun_environment_is_one_clear_error(change, message):
    env = {k: v for k, v in {**TORCHRUN, **change}.items() if v is not None}
    with pytest.raises(UnetkitError, match=re.escape(message)):
        torchrun_env(env)


def test_each_process_takes_the_gpu_of_its_local_rank():
    dist = DistEnv(rank=5, world_size=8, local_rank=1, local_world_size=4)
    assert rank_device("auto", None, 4) == "auto"  # single process: unchanged
    assert rank_device("auto", dist, 4) == "cuda:1"
    assert rank_device("cuda", dist, 4) == "cuda:1"
    assert rank_device("auto", dist, 0) == "cpu"
    assert rank_device("cpu", dist, 4) == "cpu"
    assert rank_device("cuda:0", dist, 1) == "cuda:0"  # one GPU per process through CUDA_VISIBLE_DEVICES
    with pytest.raises(UnetkitError, match="all 4 processes of this machine on one GPU"):
        rank_device("cuda:2", dist, 4)
    with pytest.raises(UnetkitError, match=r"LOCAL_RANK 1 but only 1 CUDA device\(s\)"):
        rank_device("cuda", dist, 1)


def test_sync_bn_choice():
    assert sync_bn_decision("auto", "cuda", 4) is True
    assert sync_bn_decision("auto", "cuda", 1) is False
    assert sync_bn_decision("auto", "cpu", 4) is False
    assert sync_bn_decision("auto", "cuda", None) is False
    assert sync_bn_decision("off", "cuda", 4) is False
    assert sync_bn_decision("on", "cuda", 1) is True
    with pytest.raises(UnetkitError, match="PyTorch refuses it on the CPU"):
        sync_bn_decision("on", "cpu", 2)
    with pytest.raises(UnetkitError, match="single process"):
        sync_bn_decision("on", "cuda", None)


def test_shards_cover_the_data():
    # training: padded like DistributedSampler so every rank runs the same number of steps
    assert [padded_shard(list("abcde"), r, 2) for r in (0, 1)] == [["a", "c", "e"], ["b", "d", "a"]]
    assert [padded_shard([7], r, 3) for r in range(3)] == [[7], [7], [7]]
    # validation: no padding, so no image is counted twice
    assert [val_shard(5, r, 2) for r in (0, 1)] == [[0, 2, 4], [1, 3]]
    assert sorted(i for r in range(4) for i in val_shard(11, r, 4)) == list(range(11))


def test_ranks_share_the_seeded_batches_and_their_augmentation_seeds():
    """Every rank draws the run's batches from the same generator and keeps its stride of whole batches (one
    size bucket each); the next epoch is a new order, the same on every rank; the generator state continues
    exactly as a single process's."""
    sizes = [(64, 96)] * 7 + [(128, 192)] * 2  # two buckets: 4 + 1 batches of up to 2
    single = BucketBatchSampler(sizes, 2, torch.Generator().manual_seed(3))
    ranks = [ShardedBatchSampler(BucketBatchSampler(sizes, 2, torch.Generator().manual_seed(3)), r, 2) for r in (0, 1)]
    for _ in range(2):  # two epochs
        batches = list(single)
        shards = [list(s) for s in ranks]
        assert len(batches) == 5 and [len(s) for s in shards] == [len(ranks[0])] * 2 == [3, 3]
        assert shards[0] == batches[0::2] and shards[1] == [*batches[1::2], batches[0]]
        assert all(len({sizes[i] for i, _ in batch}) == 1 for batch in batches)
    assert torch.equal(single.generator.get_state(), ranks[1].batches.generator.get_state())


def test_a_sync_batchnorm_model_is_saved_as_plain_batchnorm(tmp_path):
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).eval()
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        expected = synced(x)  # eval mode without a process group: plain batch_norm arithmetic
    from conftest import make_meta

    save_checkpoint(tmp_path / "best.pth", synced, make_meta())
    rebuilt = read_checkpoint(tmp_path / "best.pth").build_model()
    kinds = {type(m) for m in rebuilt.modules()}
    assert torch.nn.BatchNorm2d in kinds and torch.nn.SyncBatchNorm not in kinds
    with torch.no_grad():
        assert torch.equal(rebuilt(x), expected)


def test_sync_bn_on_without_cuda_is_one_line_before_work(tmp_path):
    data = tmp_path / "data"
    write_synthetic(data, 4, (64, 48), seed=0, progress=False)
    proc = run_cli("unet-train", "--data", data, "--out", tmp_path / "run", "--sync-bn", "on", *TINY)
    assert proc.returncode == 2
    assert error_lines(proc) == [
        "unet-train: error: --sync-bn on: SyncBatchNorm runs only on CUDA GPUs (PyTorch refuses it on the CPU); "
        "use --sync-bn off or auto"
    ]
    assert not (tmp_path / "run").exists()


# ---- real torchrun runs -----------------------------------------------------------------------------------------
def _digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of names and bytes, computed here independently of unetkit's own check."""
    h = hashlib.sha256()
    for name, t in state_dict.items():
        h.update(name.encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory):
    """24 cars of one view: 19 train images (10 batches of up to 2, one padded batch per epoch over two ranks)
    and 5 validation images (3 + 2 over two ranks)."""
    root = tmp_path_factory.mktemp("ddp_data")
    write_synthetic(root, 24, (96, 64), seed=0, progress=False, views=1)
    return root


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, ddp_data):
    run = tmp_path_factory.mktemp("ddp") / "run"
    proc = run_torchrun(2, "unetkit.train", "--data", ddp_data, "--out", run, "--epochs", "3", *TINY, *OPTIONS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run, proc


@pytest.mark.slow
def test_two_processes_train_one_model_and_only_rank_0_writes(ddp_run, ddp_data):
    run, proc = ddp_run
    out = proc.stdout
    assert (
        "distributed: 2 processes (gloo), global batch 4 = --batch-size 2 per process x 2 (8 per step with "
        "--accumulate 2)" in out
    )
    assert "SyncBatchNorm off" in out
    assert "data: kaggle-carvana layout, 19 train / 5 val images" in out
    # one report, from rank 0: each epoch line once
    assert [line.split()[1] for line in out.splitlines() if line.startswith("epoch ")] == ["1/3", "2/3", "3/3"]
    # the ranks ended with identical weights and buffers, and rank 0 saved exactly those
    found = re.search(r"weights identical on all 2 processes \(sha256 ([0-9a-f]{64})\)", out)
    assert found, out
    assert found.group(1) == _digest(read_checkpoint(run / "last.pth").state_dict)
    # only rank 0 wrote: one TensorBoard file, from rank 0's process, one history line per epoch
    events = list((run / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    report = f"best-eval-{ddp_data.name}-val"  # the validation report at the end of training
    written = ["best.pth", f"{report}-worst.png", f"{report}.json", "history.jsonl", "last.pth", "split.json", "tb"]
    assert sorted(p.name for p in run.iterdir()) == sorted(written)
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert "attention gates" in out and "with deep supervision" in out
    assert any(k.startswith("aux_heads.") for k in read_checkpoint(run / "last.pth").state_dict)
    # the checkpoint holds plain BatchNorm weights
    assert "sync" not in " ".join(read_checkpoint(run / "best.pth").state_dict).lower()


@pytest.mark.slow
def test_the_reported_dice_is_the_single_process_dice_of_the_checkpoint(ddp_run, ddp_data):
    run, proc = ddp_run
    meta = read_checkpoint(run / "best.pth").meta
    assert f"best validation Dice {meta.val_dice:.4f} at epoch {meta.epoch}" in proc.stdout
    settings = EvalSettings(split="val", batch_size=2, device="cpu", workers=0, progress=False)
    report = evaluate_checkpoint(run / "best.pth", ddp_data, settings)
    assert len(report.images) == 5
    # from the same integer counts
    assert report.model_size.mean_dice == meta.val_dice and report.model_size.mean_iou == meta.val_iou
    cli = run_cli("unet-train", "--eval", run / "best.pth", "--data", ddp_data, "--split", "val", "--device", "cpu",
                  "--no-progress", "--workers", "0", check=True)  # fmt: skip
    assert "(val, 5 images" in cli.stdout and f"Dice {meta.val_dice:.4f}  IoU {meta.val_iou:.4f}" in cli.stdout


@pytest.mark.slow
def test_a_resumed_distributed_run_continues_exactly(ddp_run, ddp_data, tmp_path):
    full, _ = ddp_run
    run = tmp_path / "run"
    first = run_torchrun(2, "unetkit.train", "--data", ddp_data, "--out", run, "--epochs", "2", *TINY, *OPTIONS)
    assert first.returncode == 0, first.stderr
    resumed = run_torchrun(2, "unetkit.train", "--out", run, "--resume", "--epochs", "3", "--dist-timeout", "2",
                           "--no-progress")  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed after epoch 2" in resumed.stdout
    a, b = read_checkpoint(full / "last.pth"), read_checkpoint(run / "last.pth")
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert a.meta.val_dice == b.meta.val_dice

    def scores(path):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return [{k: v for k, v in r.items() if "Throughput" not in k} for r in rows]

    assert scores(full / "history.jsonl") == scores(run / "history.jsonl")


@pytest.mark.slow
def test_sync_bn_on_under_torchrun_on_the_cpu_stops_every_rank_before_work(ddp_data, tmp_path):
    proc = run_torchrun(2, "unetkit.train", "--data", ddp_data, "--out", tmp_path / "run", *TINY, "--sync-bn", "on")
    assert proc.returncode != 0
    assert proc.stderr.count("unet-train: error: --sync-bn on: SyncBatchNorm runs only on CUDA GPUs") == 2
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_when_rank_0_stops_on_bad_data_the_other_rank_says_so_in_one_line(ddp_data, tmp_path):
    """Rank 0 checks the data and stops; rank 1, waiting for what rank 0 would share, loses its peer: one line
    each, no Python traceback from either (torchrun's own report of the failed job follows them)."""
    data = tmp_path / "data"
    shutil.copytree(ddp_data, data)
    bad = sorted((data / "train").iterdir())[0]
    bad.write_bytes(b"not an image")
    proc = run_torchrun(2, "unetkit.train", "--data", data, "--out", tmp_path / "run", *TINY)
    assert proc.returncode != 0
    assert f"unet-train: error: 1 bad file(s) in {data}; fix or remove them:\n  {bad}: cannot read image" in proc.stderr
    assert "[rank1]: Traceback" not in proc.stderr and "[rank0]: Traceback" not in proc.stderr


REDUCER = """import os, torch
from unetkit.core.distributed import process_group, torchrun_env
from unetkit.train.distributed import Distributed
dist = torchrun_env(os.environ)
with process_group(dist, torch.device("cpu"), 2):
    ddp = Distributed(torch.device("cpu"), dist, False, "gloo")
    loss, img_s = ddp.reduce_train(*((0.8, 10.0, 3) if dist.rank == 0 else (0.5, 20.0, 1)))
    print(f"rank {dist.rank}: loss {loss:.6f}, {img_s:.1f} img/s")
"""


@pytest.mark.slow
def test_the_training_loss_is_the_mean_over_every_ranks_images(tmp_path):
    """Rank 0 trained 3 images at loss 0.8, rank 1 one at 0.5 (a size bucket's partial last batch): the epoch's
    loss is (3 * 0.8 + 0.5) / 4, not the mean of the two ranks' means (0.65); throughputs add up."""
    (tmp_path / "reducer.py").write_text(REDUCER)
    proc = run_torchrun(2, "reducer", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for rank in (0, 1):
        assert f"rank {rank}: loss 0.725000, 30.0 img/s" in proc.stdout


def test_a_rank_whose_peer_stopped_is_told_apart_from_other_errors():
    env = {"RANK": "1", "WORLD_SIZE": "2"}
    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:30128. This is ...")
    assert peer_stopped(gloo, env)
    assert peer_stopped(RuntimeError("[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(...)"), env)
    assert not peer_stopped(gloo, {})  # not under a launcher: a bug, which keeps its traceback
    assert not peer_stopped(RuntimeError("CUDA error: an illegal memory access was encountered"), env)
    assert not peer_stopped(RuntimeError("CUDA error: the launch timed out and was terminated"), env)
    assert not peer_stopped(RuntimeError("DataLoader timed out after 60 seconds"), env)
    assert not peer_stopped(ValueError("gloo: closed by peer"), env)


@pytest.mark.gpu
def test_nccl_on_one_gpu(ddp_data, tmp_path):
    """World size 1 under torchrun with NCCL: the GPU path's smoke test (SyncBatchNorm on, asked for)."""
    run = tmp_path / "run"
    args = ["--base-channels", "4", "--batch-size", "2", "--workers", "0", "--no-progress", "--scale", "0.5"]
    proc = run_torchrun(1, "unetkit.train", "--data", ddp_data, "--out", run, "--epochs", "2", *args, "--sync-bn", "on")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "distributed: 1 process (nccl)" in proc.stdout and "SyncBatchNorm on" in proc.stdout
    assert "weights identical on all 1 process " in proc.stdout
    rebuilt = read_checkpoint(run / "best.pth").build_model()
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in rebuilt.modules())
