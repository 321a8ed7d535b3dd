"""Hostile params through real `dvc` in a repo copy (no TensorFlow: the `check` stage stops
them before any training stage): no path outside the repo is removed or created, no
command built from a name runs, outputs of other stages are kept, one-line error. Also:
the file behind `data.path` is a dependency."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from repo_copy import env_for, make_repo
from servers import mlflow_server
# at import, not in wait_for_checkpoint: under load TensorFlow's import can outlast a tiny
# training, whose checkpoint is gone by the time the test would look for it
from vaelab import train as vtrain

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
    # 200 GB of log-weights: refused before hours of training lead to it
    ("absurd-k", lambda p: p["evaluate"].update(k=100_000_000), "evaluate.k: 100,000,000"),
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
    if expect.startswith("models.../") and not ran(out):
        # models/../../victim.json and metrics/eval/../../victim.json normalise to one
        # path: DVC's own parser refuses the two stages before any stage runs, naming them
        assert "train@../../victim" in out.stderr, out.stderr
    else:
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


# ---------------------------------------------------------------------------------------
# the real train stage: SIGTERM, then a code edit; a real tracking server that dies

STAGE = {"data": {"valid_size": 100, "test_size": 100},
         "model": {"latent": 5, "hidden": [20]},
         # batch 20: ~240 small steps per epoch, slow enough (~0.5 s) to stop mid-run
         "train": {"epochs": 30, "batch_size": 20, "checkpoint_every": 1},
         "models": {"vae": {"objective": "elbo_analytic", "k": 1}}}


def start_stage(repo: Path, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stages.train", "--name", "vae"], cwd=repo,
                            env=env_for(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_checkpoint(repo: Path, proc: subprocess.Popen, epoch: int = 2) -> Path:
    """A checkpoint of `epoch` or later written by `proc` (not one left by an earlier run)."""
    import psutil

    started = psutil.Process(proc.pid).create_time()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        for path in (repo / ".checkpoints").glob("*.npz"):
            try:
                if path.stat().st_mtime > started and vtrain.checkpoint_meta(path)["epoch"] >= epoch:
                    return path
            except Exception:  # noqa: BLE001 - caught between write and rename
                pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no checkpoint of epoch {epoch}: {proc.communicate()}")


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def run_statuses(db: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(db) as con:
        return [s for (s,) in con.execute("select status from runs order by start_time")]


def test_sigterm_then_code_edit_retrains_from_epoch_1(tmp_path):
    repo = make_repo(tmp_path / "repo", STAGE)
    assert dvc(repo, "repro", "prepare").returncode == 0
    proc = start_stage(repo)
    ckpt = wait_for_checkpoint(repo, proc)
    proc.send_signal(15)  # SIGTERM, as a scheduler or `dvc queue kill` sends
    rc, _, err = finish(proc)
    assert rc == 143, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("train: terminated (SIGTERM)") and "Traceback" not in err, err
    assert run_statuses(repo / "mlflow.db") == ["FAILED"]
    kept = vtrain.checkpoint_meta(ckpt)["epoch"]
    assert kept >= 2 and not (repo / "models" / "vae").exists()

    # A change to the code the weights depend on, even a comment, makes it stale.
    code = repo / "vaelab" / "train.py"
    code.write_text(code.read_text() + "\n# edited after the interruption\n")
    proc = start_stage(repo)
    wait_for_checkpoint(repo, proc, epoch=1)
    proc.send_signal(15)  # the rest would train 30 epochs: what counts is how it started
    rc, out, err = finish(proc)
    assert rc == 143, err
    assert "vaelab/train.py changed): discarded; training starts from epoch 1" in out, out
    assert "resuming" not in out and "vae epoch 1/30" in out
    assert run_statuses(repo / "mlflow.db") == ["FAILED", "FAILED"], "a fresh run, not the old one"


@pytest.fixture
def server(tmp_path):
    """A real `mlflow server` on 127.0.0.1: sqlite backend, artifacts proxied by the server
    into a temporary folder (the team form in docs/team.md). Always killed."""
    with mlflow_server(tmp_path, f"sqlite:///{tmp_path / 'server.db'}") as (uri, stop):
        yield uri, stop, tmp_path / "artifacts"


def test_real_tracking_server_then_its_death_mid_training(tmp_path, server):
    from mlflow.tracking import MlflowClient

    uri, stop, artifacts = server
    repo = make_repo(tmp_path / "repo", {**STAGE, "train": {**STAGE["train"], "epochs": 2}})
    assert dvc(repo, "repro", "prepare").returncode == 0
    rc, out, err = finish(start_stage(repo, MLFLOW_TRACKING_URI=uri))
    assert rc == 0, err

    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("vae-iwae").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "vae"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid_bound")] == [1, 2]
    assert run.data.params["objective"] == "elbo_analytic"
    listed = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/encoder.keras", "model/decoder.keras", "model/model.json"} <= listed
    got = Path(client.download_artifacts(run.info.run_id, "model/model.json", str(tmp_path)))
    assert json.loads(got.read_text())["objective"] == "elbo_analytic"
    assert list(artifacts.rglob("encoder.keras")), "artifacts are stored by the server"
    tracked = json.loads((repo / "models" / "vae" / "mlflow.json").read_text())
    assert tracked["tracking_uri"] == uri and tracked["run_id"] == run.info.run_id

    # The server dies mid-training: one line naming it, the checkpoint kept.
    set_params(repo, lambda p: p["train"].update(epochs=30))
    proc = start_stage(repo, MLFLOW_TRACKING_URI=uri)
    ckpt = wait_for_checkpoint(repo, proc)
    stop()
    rc, out, err = finish(proc)
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith("train: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"train: error: MLflow store {uri} failed while logging"), lines
    assert ckpt.exists(), "the checkpoint must survive the store's death"
