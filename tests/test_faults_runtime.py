"""Faults of the running pipeline (issue 22, items 2, 4, 5, 8): parallel experiments of one
training config, a copied repo's store, outputs DVC removed before a failing stage, a
`dvc` process killed under its stage, runs left RUNNING by a SIGKILL."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from repo_copy import ROOT, env_for, make_repo
from test_faults_dvc import STAGE, dvc, finish, run_statuses, start_stage, wait_for_checkpoint

from vaelab import cli, tracking
from vaelab.config import UserError


def dead_pid() -> str:
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()


# ---------------------------------------------------------------------------------------
# item 2: a checkpoint and an MLflow run belong to one training process

def test_a_live_checkpoint_is_never_handed_to_a_second_process(tmp_path):
    from vaelab import train as vtrain

    folder = tmp_path / ".checkpoints"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from vaelab.train import own_checkpoint\n"
         f"with own_checkpoint(Path({str(folder)!r}), 'vae-abc') as p:\n"
         "    print(p, flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        held = Path(holder.stdout.readline().strip())
        assert held == folder / "vae-abc.npz"
        with vtrain.own_checkpoint(folder, "vae-abc") as mine:
            assert mine != held
            with vtrain.own_checkpoint(folder, "vae-abc") as third:  # locks are per open file
                assert third not in (mine, held)
        holder.send_signal(signal.SIGKILL)  # a killed training: its lock dies with it
        holder.wait(timeout=30)
        with vtrain.own_checkpoint(folder, "vae-abc") as after:
            assert after == held, "a killed run's checkpoint must stay resumable"
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert not list(folder.glob("*.lock")), "lock files are removed with their lock"


def test_a_checkpoint_is_read_once(tmp_path):
    """What open_checkpoint checked and the stage announced is what training resumes
    from, even if the file changes in between."""
    from test_faults import quiet, tiny_run

    from vaelab import data as vdata
    from vaelab import train as vtrain

    x, _ = vdata.load_source("mnist5k")
    x_train, x_valid = x[:600], x[600:700]
    ckpt = tmp_path / "c.npz"
    vtrain.train(tiny_run(epochs=1), x_train, x_valid, checkpoint=ckpt, progress=quiet())
    opened = vtrain.open_checkpoint(ckpt, {}, lambda line: None)
    assert opened.meta["epoch"] == 1
    vtrain.train(tiny_run(epochs=2), x_train, x_valid, checkpoint=ckpt, progress=quiet())
    assert vtrain.checkpoint_meta(ckpt)["epoch"] == 2  # the file moved on meanwhile
    r = vtrain.train(tiny_run(epochs=3), x_train, x_valid, checkpoint=ckpt, progress=quiet(),
                     resume=opened)
    assert r.resumed_from == 1 and [h["epoch"] for h in r.history] == [1, 2, 3]


def test_an_mlflow_run_is_resumed_only_by_its_owner(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    client, exp_id = tracking.connect("e")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    here = socket.gethostname()
    try:
        def run(pid, host=here, exp=None):
            tags = {"vaelab.host": host, "vaelab.pid": str(pid), "vaelab.model": "vae"}
            if exp:
                tags["dvc.exp_name"] = exp
            return client.create_run(exp_id, run_name="vae", tags=tags).info.run_id

        cases = {"a live process's": (run(live.pid), None, False),
                 "another machine's": (run(dead_pid(), host="other-host"), None, False),
                 "another experiment's": (run(dead_pid(), exp="exp-a"), "exp-b", False),
                 "its own killed one": (run(dead_pid(), exp="exp-b"), "exp-b", True)}
        for what, (run_id, exp, resumed) in cases.items():
            if exp:
                monkeypatch.setenv("DVC_EXP_NAME", exp)
            with tracking.model_run("e", "vae", {"k": 1}, {}, run_id=run_id) as log:
                assert (log.run_id == run_id) == resumed, what
            monkeypatch.delenv("DVC_EXP_NAME", raising=False)
        assert client.get_run(cases["a live process's"][0]).info.status == "RUNNING"
    finally:
        live.kill()
        live.wait()


def first_checkpoint_other_than(repo: Path, proc, taken: Path) -> Path:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        other = [p for p in (repo / ".checkpoints").glob("*.npz") if p != taken]
        if other:
            return other[0]
        time.sleep(0.1)
    raise AssertionError("the second training wrote no checkpoint of its own")


def test_parallel_experiments_of_one_config_share_no_checkpoint_or_run(tmp_path):
    """Two experiments whose training keys are equal (they differ in evaluate keys) train
    at once, as `dvc exp run --temp` or a queue with two workers does."""
    # epochs: enough that the first is still training when the second has started (~1 min)
    repo = make_repo(tmp_path / "repo", {**STAGE, "train": {**STAGE["train"], "epochs": 1000}})
    assert dvc(repo, "repro", "prepare").returncode == 0
    a = start_stage(repo, DVC_EXP_NAME="exp-a")
    b = None
    try:
        ckpt_a = wait_for_checkpoint(repo, a, epoch=2)
        b = start_stage(repo, DVC_EXP_NAME="exp-b")
        ckpt_b = first_checkpoint_other_than(repo, b, ckpt_a)
        assert a.poll() is None, "the first training ended before the second started"
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        _, _, err_a = finish(a)
        rc_b, out_b, err_b = finish(b) if b is not None else (None, "", "")
    assert "resuming" not in out_b, out_b
    assert ckpt_a != ckpt_b
    with sqlite3.connect(repo / "mlflow.db") as con:
        runs = sorted(con.execute("select name, status from runs"))
    assert runs == [("vae@exp-a", "FAILED"), ("vae@exp-b", "FAILED")], (runs, err_a, err_b)


# ---------------------------------------------------------------------------------------
# item 4: a copied repo's store

def test_a_copied_repo_never_writes_into_the_original(monkeypatch, tmp_path):
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT"):
        monkeypatch.delenv(var, raising=False)
    original = tmp_path / "original"
    (original / ".dvc").mkdir(parents=True)
    (original / "f.txt").write_text("an artifact")
    monkeypatch.chdir(original)
    with tracking.model_run("e", "vae", {"k": 1}, {}) as log:
        log.artifact(original / "f.txt")
        old_run = log.run_id
    shutil.copytree(original, tmp_path / "copy")
    before = sorted(p.relative_to(original) for p in original.rglob("*"))
    copy = tmp_path / "copy"
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # mlflow.set_tracking_uri set it
    with pytest.raises(tracking.TrackingError) as e:
        tracking.connect("e")
    line = str(e.value)
    assert "\n" not in line and str(original / "mlruns") in line and "--relocate" in line

    out = subprocess.run([sys.executable, "-m", "vaelab.tracking", "--relocate"], cwd=copy,
                         capture_output=True, text=True, env=env_for(PYTHONPATH=str(ROOT)))
    assert out.returncode == 0 and str(copy / "mlruns") in out.stdout, out.stderr
    # a stage is a fresh process: forget where this one has seen the old run's artifacts go
    from mlflow.tracking._tracking_service import utils
    utils._artifact_repos_cache.clear()
    with tracking.model_run("e", "vae", {"k": 1}, {}) as log:
        log.artifact(copy / "f.txt", name="g.txt")
        assert log.client.get_run(old_run).info.artifact_uri.startswith((copy / "mlruns").as_uri())
        # what evaluate does: log to the training run of an earlier model
        tracking.RunLogger(log.client, old_run, log.experiment_id).artifact(copy / "f.txt",
                                                                            name="h.txt")
    assert sorted(p.relative_to(original) for p in original.rglob("*")) == before
    assert len(list(copy.rglob("g.txt"))) == 1 and len(list(copy.rglob("h.txt"))) == 1


def test_a_new_experiment_keeps_its_artifacts_in_the_repo_even_from_a_temp_copy(monkeypatch,
                                                                                 tmp_path):
    """`dvc exp run --temp` runs in .dvc/tmp/exps/<tmp> with DVC_ROOT at the repo: MLflow's
    default location would be the temp copy's mlruns/, deleted with it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / ".dvc" / "tmp" / "exps" / "tmpx").mkdir(parents=True)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path / ".dvc" / "tmp" / "exps" / "tmpx")
    client, exp_id = tracking.connect("e")
    assert client.get_experiment(exp_id).artifact_location == (tmp_path / "mlruns").as_uri()


# ---------------------------------------------------------------------------------------
# item 5: outputs DVC removed before the stage ran

def failing(exc):
    def main():
        raise exc
    return main


@pytest.mark.parametrize("stage, cached, git", [
    ("train@vae", "train@vae", "metrics/train/vae.json metrics/curves/vae.csv"),
    ("evaluate@vae", "evaluate@vae", "metrics/eval/vae.json"),
    ("report", "report", "metrics/summary.json"),
    ("prepare", "prepare", None)])
def test_a_failing_stage_says_how_to_get_its_previous_outputs_back(monkeypatch, capsys, stage,
                                                                   cached, git):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("DVC_ROOT", str(ROOT))
    monkeypatch.setenv("DVC_STAGE", stage)
    for exc, code in [(UserError("models.vae.k: must be >= 1"), 2),
                      (OSError(28, "No space left on device", "models/vae"), 1)]:
        with pytest.raises(SystemExit) as e:
            cli.run(failing(exc), stage.split("@")[0])
        assert e.value.code == code
        [line] = capsys.readouterr().err.strip().splitlines()
        assert f"`dvc checkout {cached}`" in line, line
        assert (f"`git checkout -- {git}`" in line) if git else "git checkout" not in line, line


def test_a_temp_experiment_leaves_the_workspace_so_no_hint(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)  # DVC runs a --temp or queued experiment in a copy
    monkeypatch.setenv("DVC_ROOT", str(ROOT))
    monkeypatch.setenv("DVC_STAGE", "train@vae")
    with pytest.raises(SystemExit):
        cli.run(failing(UserError("x")), "train")
    assert "checkout" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# item 8: the dvc process dies; a SIGKILL leaves a run RUNNING

def test_a_stage_stops_when_the_dvc_process_that_ran_it_dies(tmp_path):
    """The parent stands for `dvc`: it starts the stage and is killed alone."""
    stage = ("import time; from vaelab import cli\n"
             "cli.run(lambda: time.sleep(120), 'train')")
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\n"
         f"child = subprocess.Popen([sys.executable, '-c', {stage!r}], "
         f"stderr=open({str(tmp_path / 'err')!r}, 'w'))\n"
         "print(child.pid, flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, cwd=tmp_path,
        env=env_for(DVC_STAGE="train@vae", DVC_ROOT=str(tmp_path),
                    PYTHONPATH=str(ROOT)))
    child = int(parent.stdout.readline())
    time.sleep(1)
    parent.send_signal(signal.SIGTERM)
    parent.wait(timeout=30)
    parent.stdout.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and tracking._alive(child):
        time.sleep(0.1)
    alive = tracking._alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the stage outlived its dvc process"
    err = (tmp_path / "err").read_text()
    assert "train: stopped: the dvc process that ran it is gone" in err, err


@pytest.mark.parametrize("shell", ["/bin/bash", None], ids=["bash", "no-SHELL"])
def test_killing_dvc_alone_stops_training_and_fails_its_run(tmp_path, shell):
    """What `timeout dvc repro` does: SIGTERM to the dvc process, not to its children. With
    SHELL unset DVC runs the stage through /bin/sh, which on Debian (dash) stays between dvc
    and python and outlives dvc."""
    import psutil

    repo = make_repo(tmp_path / "repo", STAGE)
    assert dvc(repo, "repro", "prepare").returncode == 0
    env = env_for()
    env.pop("SHELL", None)
    if shell:
        env["SHELL"] = shell
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "train@vae"], cwd=repo,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        wait_for_checkpoint(repo, proc, epoch=1)
        # the python process, not the `sh -c` DVC may run it through (SHELL unset)
        [trainer] = [p for p in psutil.Process(proc.pid).children(recursive=True)
                     if "stages.train" in " ".join(p.cmdline()) and p.name() not in cli._SHELLS]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        try:
            trainer.wait(timeout=30)
        except psutil.TimeoutExpired:
            raise AssertionError("the training process outlived dvc") from None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
    assert run_statuses(repo / "mlflow.db") == ["FAILED"], out[-2000:] + err[-2000:]
    assert list((repo / ".checkpoints").glob("*.npz")), "the checkpoint is kept to resume"


def test_check_marks_runs_of_dead_processes_killed(monkeypatch, tmp_path):
    from vaelab.config import load_params

    from stages import check

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client, exp_id = tracking.connect(load_params(ROOT / "params.yaml").mlflow.experiment)
    here, ids = socket.gethostname(), {}
    for key, host, pid in [("orphan", here, dead_pid()), ("live", here, str(os.getpid())),
                           ("elsewhere", "other-host", dead_pid())]:
        ids[key] = client.create_run(exp_id, run_name="iwae", tags={
            "vaelab.host": host, "vaelab.pid": pid, "vaelab.model": "iwae"}).info.run_id
    monkeypatch.setattr(sys, "argv", ["check", "--params", str(ROOT / "params.yaml"),
                                      "--out", str(tmp_path / "source.json")])
    check.main()
    status = {key: client.get_run(i).info.status for key, i in ids.items()}
    assert status == {"orphan": "KILLED", "live": "RUNNING", "elsewhere": "RUNNING"}


def test_check_stays_without_mlflow_when_no_run_is_running(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client, exp_id = tracking.connect("e")
    client.set_terminated(client.create_run(exp_id).info.run_id)
    code = ("import sys; from vaelab import tracking; tracking.mark_stale_runs('e'); "
            "assert 'mlflow' not in sys.modules, 'imported'")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=env_for(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert out.returncode == 0, out.stderr
