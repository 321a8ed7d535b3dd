"""Hostile params through real `dvc` in a repo copy (no TensorFlow: the `check` stage stops
them before any training stage): no path outside the repo is removed or created, no
command built from a name runs, outputs of other stages are kept, one-line error. Also:
the file behind `data.path` is a dependency."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from repo_copy import env_for, make_repo

TINY = {"data": {"valid_size": 100, "test_size": 100},
        "model": {"latent": 5, "hidden": [20]}, "train": {"epochs": 1},
        "models": {"vae": {"objective": "elbo_analytic", "k": 1}}}


def dvc(repo: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True,
                          text=True, env=env_for(), timeout=300)


def set_params(repo: Path, edit) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    edit(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def ran(out) -> list[str]:
    return [line.split("'")[1] for line in out.stdout.splitlines()
            if line.startswith("Running stage '")]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A copy with one tiny model trained by DVC and committed (dvc.lock included), as
    `dvc exp run` needs a baseline."""
    repo = make_repo(tmp_path_factory.mktemp("hostile") / "repo", TINY)
    out = dvc(repo, "repro", "train@vae")
    assert out.returncode == 0, out.stdout + out.stderr
    assert ran(out) == ["check", "prepare", "train@vae"]
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t",
                                       "commit", "-qm", "trained"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)
    victim = repo.parent / "victim" / "keep.txt"  # where models/../../victim points
    victim.parent.mkdir()
    victim.write_text("outside the repo")
    return repo


def snapshot(repo: Path) -> dict[Path, bytes]:
    """What must survive: the file outside the repo, the outputs of every stage."""
    paths = [repo.parent / "victim" / "keep.txt", repo / "metrics" / "train" / "vae.json",
             *(repo / "models" / "vae").iterdir(), *(repo / "data" / "prepared").iterdir()]
    return {p: p.read_bytes() for p in paths}


HOSTILE = [
    ("dotdot-key", lambda p: p["models"].update({"../../victim": {"objective": "iwae", "k": 2}}),
     "models.../../victim"),
    ("shell-key", lambda p: p["models"].update({"a;touch pwned;b": {"objective": "iwae", "k": 2}}),
     "models.a;touch pwned;b"),
    ("train-list", lambda p: p.update({"train": [1, 2]}), "train: must be a mapping"),
]


@pytest.mark.parametrize("command", [("repro",), ("repro", "train@vae"), ("exp", "run")],
                         ids=["repro", "repro-train@vae", "exp-run"])
@pytest.mark.parametrize("edit, expect", [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_params_stop_before_anything_is_removed_or_run(repo, edit, expect, command):
    original = (repo / "params.yaml").read_text()
    before = snapshot(repo)
    try:
        set_params(repo, edit)
        out = dvc(repo, *command)
    finally:
        (repo / "params.yaml").write_text(original)
    assert out.returncode != 0
    assert ran(out) == ["check"], out.stdout
    errors = [line for line in out.stderr.splitlines() if line.startswith("check: error: ")]
    assert len(errors) == 1 and expect in errors[0], out.stderr
    assert "Traceback" not in out.stderr
    assert snapshot(repo) == before, "an output or a file outside the repo was touched"
    assert sorted(p.name for p in (repo.parent / "victim").iterdir()) == ["keep.txt"]
    assert not list(repo.parent.rglob("pwned")), "a command built from a name ran"


def test_no_op_repro_runs_only_check_and_is_fast(repo):
    tic = time.perf_counter()
    out = dvc(repo, "repro", "train@vae")
    seconds = time.perf_counter() - tic
    assert out.returncode == 0 and ran(out) == ["check"], out.stdout + out.stderr
    print(f"no-op dvc repro train@vae: {seconds:.2f}s")
    assert seconds < 10, f"{seconds:.1f}s"  # generous for a loaded CI machine


def test_replacing_the_file_behind_data_path_reruns_prepare(tmp_path):
    from vaelab import data as vdata

    x, y = vdata.load_source("mnist5k")
    npz = tmp_path / "digits.npz"
    np.savez(npz, x=x[:1000], y=y[:1000])
    repo = make_repo(tmp_path / "repo", {**TINY, "data": {
        "source": "npz", "path": str(npz), "valid_size": 100, "test_size": 100}})
    assert ran(dvc(repo, "repro", "prepare")) == ["check", "prepare"]
    assert ran(dvc(repo, "repro", "prepare")) == ["check"], "unchanged data: prepare skipped"
    np.savez(npz, x=x[1000:2000], y=y[1000:2000])  # same path, other digits
    out = dvc(repo, "repro", "prepare")
    assert ran(out) == ["check", "prepare"], out.stdout
    prepared = np.load(repo / "data" / "prepared" / "train.npz")["x"]
    assert not any(np.array_equal(prepared[0], d) for d in x[:1000])
