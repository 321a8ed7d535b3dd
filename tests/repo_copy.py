"""A fresh clone-like copy of the repo for tests that run the real stage scripts or `dvc`."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def env_for(**extra) -> dict:
    """The environment for a stage: no MLflow/DVC settings leaking in from outside, and
    `python` (as dvc.yaml's commands call it) is this interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def merge(base: dict, over: dict) -> dict:
    """params.yaml with `over` merged in; `models:` is replaced whole."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base.get(k, {}), v) if isinstance(v, dict) and k != "models" else v
    return out


def make_repo(dest: Path, over: dict) -> Path:
    """The committed and to-be-committed files, params merged with `over`, git init."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    (dest / ".dvc").mkdir(exist_ok=True)  # repo_root() looks for it
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), over)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / "dvc.lock").unlink(missing_ok=True)  # the default run's lock is not ours
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest
