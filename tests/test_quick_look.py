"""The README's quick-look command, verbatim, in a tiny clone-like copy: a named experiment
that `dvc exp show` sets beside the baseline, with the workspace and params.yaml untouched and
the MLflow runs in the repo root's store."""
from __future__ import annotations

import json
import re
import shlex
import sqlite3
import subprocess
import sys

from repo_copy import ROOT, env_for, make_repo

# tiny models, so that the command's own settings (epochs, evaluation) are what runs
TINY = {
    "data": {"valid_size": 200, "test_size": 100},
    "models": {"vae": {"objective": "elbo_analytic", "k": 1},
               "iwae": {"objective": "iwae", "k": 3}},
}


def documented_command() -> list[str]:
    """The `dvc exp run` line of the README's "Quick look" section (backslash continuations
    joined)."""
    section = ROOT.joinpath("README.md").read_text().split("### Quick look", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    [cmd] = [c for c in block.replace("\\\n", " ").splitlines() if c.startswith("dvc exp run")]
    return shlex.split(cmd)


def sh(repo, *cmd, timeout=1800):  # 15 min at a load average of 24 on 2 cores
    out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env_for(),
                         timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)}:\n{out.stdout}\n{out.stderr}"
    return out


def test_documented_command_is_a_temp_named_experiment():
    cmd = documented_command()
    assert cmd[:3] == ["dvc", "exp", "run"] and "--temp" in cmd
    assert cmd[cmd.index("-n") + 1] == "quick-look"


def test_quick_look_leaves_the_workspace_and_records_an_experiment(tmp_path):
    repo = make_repo(tmp_path / "repo", TINY)
    params = (repo / "params.yaml").read_bytes()
    cmd = documented_command()
    sh(repo, sys.executable, "-m", *cmd)  # `python -m dvc`: this interpreter's DVC
    assert (repo / "params.yaml").read_bytes() == params
    assert sh(repo, "git", "status", "--porcelain").stdout == "", "the workspace is untouched"
    assert not (repo / "models").exists() and not (repo / "dvc.lock").exists()

    rows = json.loads(sh(repo, sys.executable, "-m", "dvc", "exp", "show", "--json").stdout)
    [base] = [r for r in rows if r["rev"] != "workspace"]
    [exp] = [e for r in base["experiments"] or [] for e in r["revs"]
             if e["name"] == "quick-look"]
    got = exp["data"]["params"]["params.yaml"]["data"]
    assert got["train"]["epochs"] == 3 and got["models"] == TINY["models"]
    assert set(exp["data"]["metrics"]["metrics/summary.json"]["data"]) == set(TINY["models"])

    # the runs are in the repo root's store, not in the temporary copy DVC ran in
    assert not list((repo / ".dvc").rglob("mlflow.db"))
    with sqlite3.connect(repo / "mlflow.db") as db:
        runs = {n for (n,) in db.execute("select name from runs where status = 'FINISHED'")}
    assert runs == {f"{m}@quick-look" for m in TINY["models"]}
