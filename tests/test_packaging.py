"""`pip install .` gets every module of every stage, under the unetkit namespace, with the console scripts."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("core", "train", "export", "infer", "bench")


def test_wheel_holds_every_stage_module_and_script(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path, ROOT],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("unetkit-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    expected = {f"unetkit/{p.relative_to(ROOT).as_posix()}" for stage in STAGES for p in (ROOT / stage).rglob("*.py")}
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    assert "unetkit/__init__.py" not in names
    assert not any(n.split("/")[0] in STAGES for n in names)  # no top-level train/ or export/ module
    for script in ("unet-train", "unet-data"):
        assert f"{script} = unetkit." in entry_points
