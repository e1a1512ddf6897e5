"""Training as one of several processes started by torchrun: DistributedDataParallel, each process its share of
the seeded batches, validation without duplicates scored from summed counts, SyncBatchNorm, rank 0 writing.

`Distributed` is what a run does differently in a group; for the one process of an ordinary run every method
is the identity, so training without torchrun is exactly what it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections.abc import Iterator, Sequence
from typing import TypeVar

import torch
from torch.utils.data import Dataset, Sampler, Subset

from unetkit.core.device import resolve_device, use_device
from unetkit.core.distributed import DistEnv, process_group, quiet_unless_main, rank_device
from unetkit.core.errors import UnetkitError
from unetkit.core.metrics import class_scores

from .config import SYNC_BN_CHOICES, TrainConfig
from .loop import EvalResult

log = logging.getLogger(__name__)
T = TypeVar("T")


def sync_bn_decision(choice: str, device_type: str, world_size: int | None) -> bool:
    """Whether BatchNorm is synchronized across processes (`world_size` None: not under torchrun).

    auto: on CUDA with more than one process, where a GPU's few full-size images make per-GPU statistics
    noisy. on: CUDA under torchrun only (PyTorch's SyncBatchNorm refuses CPU tensors). off: never.
    """
    if choice not in SYNC_BN_CHOICES:
        raise UnetkitError(f"--sync-bn {choice}: choose one of {', '.join(SYNC_BN_CHOICES)}")
    if choice == "on":
        if device_type != "cuda":
            raise UnetkitError(
                "--sync-bn on: SyncBatchNorm runs only on CUDA GPUs (PyTorch refuses it on the CPU); "
                "use --sync-bn off or auto"
            )
        if world_size is None:
            raise UnetkitError(
                "--sync-bn on: it synchronizes BatchNorm between torchrun processes and this run is a single "
                "process; start it with torchrun or use --sync-bn auto"
            )
        return True
    return choice == "auto" and device_type == "cuda" and (world_size or 1) > 1


def padded_shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Rank `rank`'s share of `items` (strided), every rank the same length ceil(n/world): the first items are
    repeated to fill, as torch's DistributedSampler pads, so every process runs the same number of steps."""
    n = len(items)
    total = math.ceil(n / world) * world
    padded = list(items) + [items[i % n] for i in range(total - n)] if n else []
    return padded[rank:total:world]


def val_shard(n: int, rank: int, world: int) -> list[int]:
    """Rank `rank`'s validation indices: strided, no padding, so summed counts cover each image exactly once."""
    return list(range(rank, n, world))


def weights_digest(model: torch.nn.Module) -> bytes:
    """SHA-256 over every parameter and buffer (names, then bytes in standard layout): equal digests, equal
    weights and BatchNorm statistics."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.digest()


class ShardedBatchSampler(Sampler):
    """This rank's share of the batches a batch sampler draws (`BucketBatchSampler`), padded like
    `padded_shard` so every rank runs the same number of steps.

    Every rank holds the same generator (seeded with the run's seed, restored from the same last.pth), draws
    the same batches in the same order each epoch and keeps its stride of them: a new order every epoch, the
    same on every rank, as DistributedSampler's set_epoch gives, and a resumed run continues exactly. Whole
    batches are shared out, so a batch still holds images of one size bucket.
    """

    def __init__(self, batches: Sampler, rank: int, world: int) -> None:
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self) -> int:
        return math.ceil(len(self.batches) / self.world)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        yield from padded_shard(list(self.batches), self.rank, self.world)  # drawn at the first batch, not at iter()


class Distributed:
    """What a training run does differently as one of several processes (`dist` None: the only process)."""

    def __init__(self, device: torch.device, dist: DistEnv | None, sync_bn: bool, backend: str | None = None) -> None:
        self.device, self.dist, self.sync_bn, self.backend = device, dist, sync_bn, backend

    @classmethod
    def single(cls, cfg: TrainConfig) -> Distributed:
        """The one process of an ordinary run."""
        device = resolve_device(cfg.device)
        use_device(device)  # the DataLoader's pin-memory thread and cuDNN follow the current device
        return cls(device, None, sync_bn_decision(cfg.sync_bn, device.type, None))

    @property
    def rank(self) -> int:
        return self.dist.rank if self.dist else 0

    @property
    def world(self) -> int:
        return self.dist.world_size if self.dist else 1

    @property
    def is_main(self) -> bool:
        """Rank 0 (or the only process) writes checkpoints, TensorBoard and history."""
        return self.rank == 0

    def describe(self, batch_size: int, accumulate: int = 1) -> str | None:
        """The line that says how the processes share the work; None for a single process."""
        if self.dist is None:
            return None
        total = batch_size * self.world * accumulate
        step = f" ({total} per step with --accumulate {accumulate})" if accumulate > 1 else ""
        return (
            f"distributed: {_processes(self.world)} ({self.backend}), global batch {batch_size * self.world} = "
            f"--batch-size {batch_size} per process x {self.world}{step}; SyncBatchNorm "
            f"{'on' if self.sync_bn else 'off'}; --lr is not scaled"
        )

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model as trained: with SyncBatchNorm layers if chosen (the same parameter objects, so the
        optimizer and checkpoints are unchanged) inside DistributedDataParallel; the model itself alone."""
        if self.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if self.dist is None:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)

    def train_batches(self, batches: Sampler) -> Sampler:
        """The batches this process trains on: all of them alone, its share under torchrun."""
        if self.dist is None:
            return batches
        return ShardedBatchSampler(batches, self.rank, self.world)

    def share(self, value: T) -> T:
        """Rank 0's `value` on every rank (the others pass anything); also where they wait for rank 0."""
        if self.dist is None:
            return value
        import torch.distributed as tdist

        box = [value]
        tdist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def val_part(self, dataset: Dataset) -> Dataset:
        if self.dist is None:
            return dataset
        return Subset(dataset, val_shard(len(dataset), self.rank, self.world))  # type: ignore[arg-type]

    def reduce_eval(self, result: EvalResult, n_classes: int) -> EvalResult:
        """The whole validation set's result: counts, images and loss summed over ranks, scores computed once
        from the sums (never an average of per-rank Dice), the same on every rank."""
        if self.dist is None:
            return result
        import torch.distributed as tdist

        assert result.counts is not None  # evaluate() always returns them
        counts = torch.cat([result.counts.reshape(-1), torch.tensor([result.n])]).to(self.device)
        loss = torch.tensor([result.loss * result.n], dtype=torch.float64, device=self.device)
        tdist.all_reduce(counts)
        tdist.all_reduce(loss)
        counts, n = counts[:-1].cpu().view_as(result.counts), int(counts[-1])
        return EvalResult(loss.item() / n, class_scores(counts, n_classes), result.sample, counts=counts, n=n)

    def reduce_train(self, loss: float, images_per_s: float, images: int) -> tuple[float, float]:
        """Mean training loss per image over every rank's images (ranks may see a few more or fewer: a size
        bucket's last batch is partial) and the summed throughput."""
        if self.dist is None:
            return loss, images_per_s
        import torch.distributed as tdist

        values = torch.tensor([loss * images, images, images_per_s], dtype=torch.float64, device=self.device)
        tdist.all_reduce(values)
        return values[0].item() / max(values[1].item(), 1.0), values[2].item()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any: decisions that end an epoch are taken together."""
        if self.dist is None:
            return flag
        import torch.distributed as tdist

        value = torch.tensor([int(flag)], device=self.device)
        tdist.all_reduce(value, op=tdist.ReduceOp.MAX)
        return bool(value.item())

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """BatchNorm running statistics averaged over the processes (as timm's distribute_bn does), counters
        taken from rank 0: each rank updated them from its own last batches, and validation and the saved
        checkpoint must see one model. With SyncBatchNorm they are already equal."""
        if self.dist is None:
            return
        import torch.distributed as tdist

        for buffer in model.buffers():
            if buffer.is_floating_point():
                tdist.all_reduce(buffer)
                buffer.div_(self.world)
            else:
                tdist.broadcast(buffer, src=0)

    def check_in_sync(self, model: torch.nn.Module) -> None:
        """Every rank's weights and buffers compared by digest at the end of a run: DistributedDataParallel
        keeps them equal, and a run whose ranks drifted apart (a buffer not synchronized, a rank that took
        another decision) fails here instead of saving one rank's view as the result."""
        if self.dist is None:
            return
        import torch.distributed as tdist

        mine = torch.frombuffer(bytearray(weights_digest(model)), dtype=torch.uint8).to(self.device)
        every = [torch.empty_like(mine) for _ in range(self.world)]
        tdist.all_gather(every, mine)
        differ = [rank for rank, theirs in enumerate(every) if not torch.equal(theirs, every[0])]
        if differ:
            raise UnetkitError(f"the weights of rank(s) {differ} differ from rank 0's at the end of the run")
        digest = bytes(mine.cpu().tolist()).hex()
        log.info("weights identical on all %s (sha256 %s)", _processes(self.world), digest)

    def barrier(self) -> None:
        """Every rank waits here until rank 0 has written what the others may read next."""
        if self.dist is not None:
            import torch.distributed as tdist

            tdist.barrier()


def _processes(n: int) -> str:
    return f"{n} process{'es' if n != 1 else ''}"


@contextlib.contextmanager
def training_processes(cfg: TrainConfig, dist: DistEnv | None) -> Iterator[Distributed]:
    """The run's `Distributed`: under torchrun this process's GPU (cuda:LOCAL_RANK) or the CPU, the process
    group joined (NCCL on CUDA, Gloo on the CPU, `cfg.dist_timeout` minutes per collective) and left at the
    end; --sync-bn is checked before any work."""
    if dist is None:
        yield Distributed.single(cfg)
        return
    device = resolve_device(rank_device(cfg.device, dist, torch.cuda.device_count()))
    sync = sync_bn_decision(cfg.sync_bn, device.type, dist.world_size)
    quiet_unless_main(dist)
    with process_group(dist, device, cfg.dist_timeout) as backend:
        yield Distributed(device, dist, sync, backend)
