"""Where the MLflow store lives, whoever runs the stage."""
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
