"""Where the MLflow store lives, whoever runs the stage; runs orphaned by a kill."""
import os
import socket
import subprocess
import sys

from vaelab import tracking


def test_default_store_is_anchored_at_dvc_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir("/")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_temp_experiment_copies_log_to_the_real_repo(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    temp_copy = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    temp_copy.mkdir(parents=True)
    monkeypatch.setenv("DVC_ROOT", str(temp_copy))
    assert tracking.repo_root() == (tmp_path / "repo").resolve()


def test_without_dvc_root_the_nearest_dvc_folder_wins(monkeypatch, tmp_path):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")
    assert tracking.repo_root() == tmp_path.resolve()


def test_environment_variable_overrides(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking.tracking_uri() == "http://tracking.example:5000"


def test_unusable_sqlite_folder_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    try:
        tracking.connect("e")
    except tracking.TrackingError as e:
        assert str(tmp_path / "missing") in str(e) and "\n" not in str(e)
    else:
        raise AssertionError("expected TrackingError")


def test_runs_left_running_by_dead_processes_are_marked_killed(monkeypatch, tmp_path):
    """A SIGKILLed training leaves its run RUNNING; the next run of the same model marks it
    KILLED, but leaves alone runs of live processes, other machines and other models."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client, exp_id = tracking.connect("e")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    here, alive = socket.gethostname(), str(os.getpid())
    ids = {}
    for key, name, host, pid in [("orphan", "vae", here, gone), ("live", "vae", here, alive),
                                 ("elsewhere", "vae", "other-host", gone),
                                 ("other model", "iwae", here, gone)]:
        run = client.create_run(exp_id, run_name=name,
                                tags={"vaelab.host": host, "vaelab.pid": pid})
        ids[key] = run.info.run_id
    with tracking.model_run("e", "vae", {"k": 1}, {}) as log:
        new = log.run_id
        assert client.get_run(new).data.tags["vaelab.pid"] == alive
    status = {key: client.get_run(i).info.status for key, i in ids.items()}
    assert status == {"orphan": "KILLED", "live": "RUNNING", "elsewhere": "RUNNING",
                      "other model": "RUNNING"}
    assert client.get_run(new).info.status == "FINISHED"
