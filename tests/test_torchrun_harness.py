"""The torchrun harness of the distributed tests stops every worker it started: torchrun gives each worker a
session of its own, so killing torchrun's process group alone (at a timeout, or when gpu-check's time limit
interrupts pytest) would leave the workers running."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import interruptible

TESTS = Path(__file__).resolve().parent
#: A worker that says who it is and then hangs, as a rank stuck in a collective would.
SLEEPER = "import os, sys, time\nopen(sys.argv[1] + os.environ['LOCAL_RANK'], 'w').write(str(os.getpid()))\n"
SLEEPER += "time.sleep(600)\n"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from Linux's /proc")
@pytest.mark.parametrize("how", ["timeout", "ctrl-c"])
def test_a_hung_torchrun_leaves_no_worker_behind(tmp_path, how):
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    timeout = 10 if how == "timeout" else 600
    harness = (
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nfrom conftest import run_torchrun\n"
        f"run_torchrun(2, 'sleeper', {str(tmp_path / 'pid')!r}, timeout={timeout}, cwd={str(tmp_path)!r})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", harness], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interruptible)  # fmt: skip
    try:
        files = [tmp_path / f"pid{rank}" for rank in range(2)]
        deadline = time.monotonic() + 60
        while not all(f.exists() and f.read_text() for f in files) and time.monotonic() < deadline:
            time.sleep(0.2)
        pids = [int(f.read_text()) for f in files]
        assert all(_alive(p) for p in pids)
        if how == "ctrl-c":
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert ("ran past 10 s" if how == "timeout" else "KeyboardInterrupt") in err
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)
