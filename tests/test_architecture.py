"""The code's shape, as issue 21 asks it to stay: the library's import graph is layered (every
import of a vaelab module goes to a lower layer, so there is no cycle), stage scripts are thin,
and no library function is over 60 lines without its reason written beside it."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# From the bottom up; a module imports only modules of lower layers. A new module takes the
# lowest layer its imports allow.
LAYERS = [
    {"__init__", "registry", "io", "literature", "quiet", "mlflow_digits"},  # none
    {"backend"},  # the Keras backend's few differing helpers (quiet: the XLA flags it set)
    {"config"},  # params.yaml -> dataclasses
    {"cli", "card", "measurements", "data", "figures", "benchmarks"},
    {"cost", "provenance", "tracking"},
    {"models", "objectives"},  # networks and distributions; bounds
    {"snr", "train"},
    {"evaluate", "fit", "report"},  # one model measured, one model trained, the judgement
    {"bench"},  # tools over all of it
    {"gpucheck"},
]
LAYER = {m: i for i, layer in enumerate(LAYERS) for m in layer}
LONG = "long:"  # a function over MAX_LINES says why in a comment holding this word
MAX_LINES = 60


def project_imports(path: Path) -> set[str]:
    """The vaelab modules a file imports (relative or absolute, at any depth in the file)."""
    out = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom):
            parts = (n.module or "").split(".")
            if n.level == 1 or parts[0] == "vaelab":
                rest = parts[1:] if parts[0] == "vaelab" else parts
                out.update([rest[0]] if rest and rest[0] else [a.name for a in n.names])
        elif isinstance(n, ast.Import):
            out.update(a.name.split(".")[1] for a in n.names if a.name.startswith("vaelab."))
    return out - {path.stem}


def modules() -> list[Path]:
    return sorted((ROOT / "vaelab").glob("*.py"))


def test_every_module_has_a_layer():
    assert {p.stem for p in modules()} == set(LAYER), "add the new module to LAYERS"


def upward(path: Path) -> dict[str, int | None]:
    """The project imports of a module that do not go to a lower layer."""
    return {m: LAYER.get(m) for m in project_imports(path) if LAYER.get(m, 99) >= LAYER[path.stem]}


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.stem)
def test_imports_go_down_only(path):
    assert not upward(path), f"{path.stem} (layer {LAYER[path.stem]}) imports {upward(path)}"


def test_the_rule_catches_a_cycle_and_a_layer_mate(tmp_path):
    # what keeps the graph acyclic: config importing models (which imports config) is caught,
    # so is a module importing one of its own layer; an import inside a function counts
    fake = tmp_path / "config.py"
    fake.write_text("from . import models\nfrom vaelab.registry import HParam\n")
    assert upward(fake) == {"models": LAYER["models"]}
    fake = tmp_path / "models.py"
    fake.write_text("def f():\n    import vaelab.objectives\n    from .config import Params\n")
    assert upward(fake) == {"objectives": LAYER["objectives"]}


@pytest.mark.parametrize("path", sorted((ROOT / "stages").glob("*.py")), ids=lambda p: p.stem)
def test_stage_scripts_are_thin(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name}: {lines} lines; move the logic into vaelab/"
    assert all(not m.startswith("stages") for m in project_imports(path))


def long_functions(path: Path) -> list[str]:
    text = path.read_text()
    lines = text.splitlines()
    out = []
    for n in ast.walk(ast.parse(text)):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            size = n.end_lineno - n.lineno + 1
            if size > MAX_LINES and not any(LONG in line for line in lines[n.lineno - 2:n.lineno + 1]):
                out.append(f"{path.stem}.{n.name}: {size} lines")
    return out


def test_no_long_function_without_its_reason():
    assert [f for p in modules() for f in long_functions(p)] == []
