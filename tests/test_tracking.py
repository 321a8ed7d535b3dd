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


def test_runs_are_named_after_model_and_dvc_experiment(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-abc12")
    with tracking.model_run("e", "vae", {"k": 1}, {}) as log:
        run = log.client.get_run(log.run_id)
        assert run.info.run_name == "vae@exp-abc12"
        assert run.data.tags["vaelab.model"] == "vae"
    monkeypatch.delenv("DVC_EXP_NAME")
    assert tracking.run_name("vae") == "vae"


def test_experiment_opens_as_model_development(monkeypatch, tmp_path):
    """MLflow's UI reads this tag where its workflow switch does not decide (README)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client, exp_id = tracking.connect("e")
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"
    client.delete_experiment_tag(exp_id, "mlflow.experimentKind")  # a store from before
    client, exp_id = tracking.connect("e")
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_params_of_a_reevaluation_keep_the_first_and_tag_the_latest(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with tracking.model_run("e", "vae", {"k": 1}, {}) as log:
        log.params({"evaluate.k": 5000, "evaluate.n_test": 500})
        log.params({"evaluate.k": 200, "evaluate.n_test": 500})  # no MLflow error
        run = log.client.get_run(log.run_id)
    assert run.data.params["evaluate.k"] == "5000" and run.data.tags["evaluate.k"] == "200"
    assert "evaluate.n_test" not in run.data.tags


def test_a_failing_optional_extra_keeps_the_run(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with tracking.model_run("e", "vae", {"k": 1}, {}) as log:
        log.keras_model(object(), None)  # not a Keras model: the flavour fails
        log.dataset("not an array", "d", "/nowhere")
        run_id = log.run_id
    out = capsys.readouterr().out
    assert "mlflow: Keras model flavour not logged" in out and "mlflow: dataset d not logged" in out
    assert log.client.get_run(run_id).info.status == "FINISHED"
