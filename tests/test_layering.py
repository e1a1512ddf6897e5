"""Imports flow one way: core imports nothing of unetkit; train and infer import core; export and bench import
infer and core, and of train only the synthetic-data helper; nothing imports bench."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("core", "train", "infer", "export", "bench")
ALLOWED = {"core": set(), "train": {"core"}, "infer": {"core"}, "export": {"core", "infer"}, "bench": {"core", "infer"}}
#: Training-side helpers that export and bench may use: sample images for verification and benchmarks.
TRAIN_HELPERS = {"unetkit.train.data.synth"}


def imported_modules(path: Path) -> set[str]:
    """The unetkit modules a file imports (relative imports resolved against the file's own package), and
    `top-level X` for a bare import of a stage folder."""
    package = ["unetkit", *path.parent.relative_to(ROOT).parts]  # infer/engines/x.py -> unetkit.infer.engines
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            names = [".".join([*base, *([node.module] if node.module else [])])]
        for name in names:
            parts = name.split(".")
            if parts[0] == "unetkit" and len(parts) > 1:
                modules.add(name)
            elif parts[0] in STAGES:
                modules.add(f"top-level {parts[0]}")
    return modules


def wrong_imports(stage: str, modules: set[str]) -> list[str]:
    allowed = ALLOWED[stage] | {stage}
    wrong = []
    for module in modules:
        if module.startswith("top-level"):
            wrong.append(module)
            continue
        target = module.split(".")[1]
        if target in allowed or (stage in ("export", "bench") and module in TRAIN_HELPERS):
            continue
        wrong.append(module)
    return sorted(wrong)


@pytest.mark.parametrize("stage", STAGES)
def test_imports_flow_one_way(stage):
    folder = ROOT / stage
    assert folder.is_dir(), f"{stage}/ is missing"
    for path in folder.rglob("*.py"):
        wrong = wrong_imports(stage, imported_modules(path))
        assert not wrong, f"{path.relative_to(ROOT)} imports {wrong}"


def test_the_rule_itself():
    assert wrong_imports("infer", {"unetkit.core.meta", "unetkit.infer.io"}) == []
    assert wrong_imports("infer", {"unetkit.train.data.synth"}) == ["unetkit.train.data.synth"]
    assert wrong_imports("bench", {"unetkit.train.data.synth"}) == []
    assert wrong_imports("bench", {"unetkit.train.fit"}) == ["unetkit.train.fit"]
    assert wrong_imports("core", {"unetkit.infer"}) == ["unetkit.infer"]
    assert wrong_imports("train", {"unetkit.bench.cli"}) == ["unetkit.bench.cli"]


def test_no_unetkit_init_and_no_top_level_stage_modules():
    assert not (ROOT / "unetkit" / "__init__.py").exists()
    import unetkit

    assert getattr(unetkit, "__file__", None) is None  # a namespace package


def test_the_entry_points_start_before_torch_loads():
    """The commands' launcher (and unetkit.core, whose names load on first use) import nothing heavy, so Ctrl-C
    while a command loads is the launcher's one line (core/launch.py)."""
    import subprocess
    import sys

    code = ("import sys, unetkit.core, unetkit.core.launch, unetkit.infer, unetkit.train; "
            "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'onnxruntime') if m in sys.modules))")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
    import unetkit.core

    assert sorted(unetkit.core.__all__) == sorted(unetkit.core._WHERE)
    assert all(getattr(unetkit.core, name) is not None for name in unetkit.core.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        unetkit.core.nothing  # noqa: B018
