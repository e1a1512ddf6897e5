"""One of several processes started by torchrun: who this process is, which device it takes, the process group.

`torchrun --nproc-per-node N` (torch.distributed.run) starts N copies of a command and gives each one RANK,
LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT. `torchrun_env` reads them as a pure
function of the environment, so the decision is tested without starting processes; without them a command
runs as the single process it always was. Each process of a machine takes the GPU of its LOCAL_RANK.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch

from .errors import UnetkitError

log = logging.getLogger(__name__)

#: How long a process waits for the others at a collective call before it gives up (torch's default too).
DEFAULT_TIMEOUT_MINUTES = 30.0
_REQUIRED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistEnv:
    """This process's place among the processes torchrun started."""

    rank: int  # 0 .. world_size-1 over every machine
    world_size: int
    local_rank: int = 0  # 0 .. local_world_size-1 on this machine: the GPU it takes
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes what the run shares (checkpoints, logs, merged results)."""
        return self.rank == 0


def torchrun_env(env: Mapping[str, str]) -> DistEnv | None:
    """The torchrun environment in `env` (os.environ), or None when this process was started alone.

    A partial or inconsistent environment is a UnetkitError naming the variables, not a hang in
    init_process_group.
    """
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return None
    missing = [key for key in _REQUIRED if not env.get(key)]
    if missing:
        raise UnetkitError(
            f"the environment sets {'RANK' if 'RANK' in env else 'WORLD_SIZE'} but not {', '.join(missing)}: "
            "start several processes with torchrun (torchrun --nproc-per-node N -m unetkit.train ...)"
        )
    values: dict[str, int] = {}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        text = env.get(key, env["WORLD_SIZE"] if key == "LOCAL_WORLD_SIZE" else "")
        try:
            values[key] = int(text)
        except ValueError:
            raise UnetkitError(f"environment variable {key}={text!r} is not a whole number") from None
    dist = DistEnv(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], values["LOCAL_WORLD_SIZE"])
    if not (dist.world_size >= 1 and 0 <= dist.rank < dist.world_size):
        raise UnetkitError(f"RANK={dist.rank} with WORLD_SIZE={dist.world_size}: need 0 <= RANK < WORLD_SIZE")
    if not (1 <= dist.local_world_size <= dist.world_size and 0 <= dist.local_rank < dist.local_world_size):
        raise UnetkitError(
            f"LOCAL_RANK={dist.local_rank} with LOCAL_WORLD_SIZE={dist.local_world_size}: need 0 <= LOCAL_RANK < "
            "LOCAL_WORLD_SIZE <= WORLD_SIZE"
        )
    return dist


def rank_device(requested: str, dist: DistEnv | None, cuda_count: int) -> str:
    """The --device this process uses: as given for a single process; under torchrun `auto` and `cuda` mean
    cuda:LOCAL_RANK, so the processes of a machine share its GPUs one each. `cuda:N` is kept where each
    process sees one GPU (CUDA_VISIBLE_DEVICES set per process)."""
    if dist is None or requested == "cpu":
        return requested
    if requested == "auto" and cuda_count == 0:
        return "cpu"
    if requested in ("auto", "cuda"):
        if cuda_count == 0:
            return requested  # resolve_device says that no GPU is visible
        if dist.local_rank >= cuda_count:
            raise UnetkitError(
                f"LOCAL_RANK {dist.local_rank} but only {cuda_count} CUDA device(s) are visible: start at most "
                f"{cuda_count} process(es) per machine (torchrun --nproc-per-node {cuda_count}), or give each "
                "process one GPU with CUDA_VISIBLE_DEVICES and --device cuda:0"
            )
        return f"cuda:{dist.local_rank}"
    if requested.startswith("cuda:") and dist.local_world_size > 1 and cuda_count > 1:
        raise UnetkitError(
            f"--device {requested} would put all {dist.local_world_size} processes of this machine on one GPU; "
            "use --device cuda (each process takes cuda:LOCAL_RANK)"
        )
    return requested


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, Gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(
    dist: DistEnv, device: torch.device, timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES
) -> Iterator[str]:
    """Join the processes torchrun started (env:// rendezvous) for the length of the block; yields the backend.

    Every collective call waits at most `timeout_minutes` for the other processes, so a process that died
    ends the run instead of hanging it.
    """
    import torch.distributed as tdist

    backend = backend_for(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before any CUDA work, so no context lands on cuda:0 by default
    tdist.init_process_group(
        backend,
        timeout=timedelta(minutes=timeout_minutes),
        device_id=device if device.type == "cuda" else None,  # NCCL binds its communicator to this GPU
    )
    log.debug("rank %d of %d joined the %s process group", dist.rank, dist.world_size, backend)
    try:
        yield backend
    finally:
        tdist.destroy_process_group()


def barrier() -> None:
    """Wait until every process of the group gets here (no-op without a process group)."""
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()


def quiet_unless_main(dist: DistEnv | None) -> None:
    """Only rank 0 speaks: the other processes keep errors only, so N processes print one report."""
    if dist is not None and not dist.is_main:
        logging.getLogger("unetkit").setLevel(logging.ERROR)
