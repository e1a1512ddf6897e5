"""Imports flow one way: infer imports train; export and bench import infer and train; nothing imports bench."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("train", "infer", "export", "bench")
ALLOWED = {"train": set(), "infer": {"train"}, "export": {"train", "infer"}, "bench": {"train", "infer"}}


def imported_stages(path: Path) -> set[str]:
    """The unetkit stages a file imports, relative imports resolved against the file's own package."""
    package = ["unetkit", *path.parent.relative_to(ROOT).parts]  # infer/engines/x.py -> unetkit.infer.engines
    stages = set()
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
                stages.add(parts[1])
            elif parts[0] in STAGES:
                stages.add(f"top-level {parts[0]}")
    return stages


@pytest.mark.parametrize("stage", STAGES)
def test_imports_flow_one_way(stage):
    folder = ROOT / stage
    if not folder.is_dir():
        pytest.skip(f"{stage}/ does not exist yet")
    for path in folder.rglob("*.py"):
        wrong = imported_stages(path) - ALLOWED[stage] - {stage}
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_no_unetkit_init_and_no_top_level_stage_modules():
    assert not (ROOT / "unetkit" / "__init__.py").exists()
    import unetkit

    assert getattr(unetkit, "__file__", None) is None  # a namespace package
