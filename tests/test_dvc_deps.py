"""dvc.yaml's code deps against the code each stage really imports.

A module a stage imports but dvc.yaml does not list is a silent staleness bug: editing it
would not rerun the stage (training's checkpoint fingerprint would still notice, nothing
else would). The import graph is read from the source (every `import` statement, also
those inside functions), so no TensorFlow starts and lazily imported modules count.
"""
import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """vaelab modules (as 'vaelab/x.py') that the file imports, directly."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1 and path.parent.name == "vaelab":  # from . import x / from .x import
                base = "vaelab" + (f".{base}" if base else "")
            if base == "vaelab":
                out |= {f"vaelab/{a.name}.py" for a in node.names
                        if (ROOT / "vaelab" / f"{a.name}.py").exists()}
            elif base.startswith("vaelab."):
                out.add(f"vaelab/{base.split('.')[1]}.py")
        elif isinstance(node, ast.Import):
            out |= {f"vaelab/{a.name.split('.')[1]}.py" for a in node.names
                    if a.name.startswith("vaelab.")}
        if isinstance(node, ast.ImportFrom) and node.module == "stages" or (
                isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages.")):
            mod = (node.module or "").split(".")
            names = [mod[1]] if len(mod) > 1 else [a.name for a in node.names]
            out |= {f"stages/{n}.py" for n in names}
    return out


def closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo += sorted(imported_modules(ROOT / f) - seen)
    return seen


def stages():
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in spec.items():
        stage = stage.get("do", stage)
        script = stage["cmd"].split("-m stages.")[1].split()[0]
        deps = {d for d in stage.get("deps", []) if d.endswith(".py")}
        yield name, f"stages/{script}.py", deps


@pytest.mark.parametrize("name,script,deps", list(stages()), ids=[s[0] for s in stages()])
def test_stage_deps_are_the_code_it_imports(name, script, deps):
    if name == "check":  # always_changed: it runs every time, deps would add nothing
        return
    need = closure(script)
    assert not need - deps, f"dvc.yaml stage {name} lacks deps {sorted(need - deps)}"
    assert not deps - need, f"dvc.yaml stage {name} lists deps it never imports {sorted(deps - need)}"
