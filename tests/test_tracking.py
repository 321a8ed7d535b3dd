"""Where the MLflow store lives, whoever runs the stage; runs orphaned by a kill."""
import dataclasses
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

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
    assert "mlflow: MLflow model not logged" in out and "mlflow: dataset d not logged" in out
    assert log.client.get_run(run_id).info.status == "FINISHED"


def _evaluated(exp, name, k, n_test, nll, times=1):
    """A training run of `name` evaluated `times` with L_k on n_test digits (what
    stages/evaluate.py logs), as a user's store holds after runs of other settings."""
    from test_measurements import record

    from vaelab import measurements
    from vaelab.config import EvaluateConfig

    cfg = EvaluateConfig(k=k, n_test=n_test, snr_k=(1, 5), prior_k=(1, 10))
    with tracking.model_run(exp, name, {"objective": "elbo_analytic", "k": 1},
                            {"objective": "elbo_analytic", "k": 1}) as log:
        pass
    r = dataclasses.replace(record(name, nll=nll), n_test=n_test,
                            evaluate=measurements.settings(cfg))
    steps = [measurements.log_to_run(log, r, cfg) for _ in range(times)]
    return log, steps


def test_test_metrics_have_one_key_whatever_the_estimator(monkeypatch, tmp_path):
    """`metrics.test/nll` lines up runs evaluated with other settings; the estimator is a
    tag and a param, and step n is the model's n-th evaluation."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    full, steps = _evaluated("e", "vae", 5000, 500, 90.0, times=2)
    assert steps == [1, 2]
    quick, _ = _evaluated("e", "iwae", 200, 50, 95.0)
    runs = mlflow.search_runs(experiment_names=["e"]).set_index("tags.vaelab.model")
    assert runs.loc["vae", "metrics.test/nll"] == pytest.approx(90.0 + 1 / 7)
    assert runs.loc["iwae", "metrics.test/nll"] == pytest.approx(95.0 + 1 / 7)
    assert runs.loc["iwae", "metrics.test/k"] == 200 and runs.loc["vae", "metrics.test/k"] == 5000
    assert runs.loc["vae", "tags.vaelab.test_estimator"] == "L_5000 on 500 test digits"
    assert runs.loc["iwae", "tags.vaelab.test_estimator"] == "L_200 on 50 test digits"
    assert runs.loc["iwae", "params.evaluate.n_test_used"] == "50"
    assert not [c for c in runs.columns if c.startswith("metrics.test_L")]
    history = full.client.get_metric_history(full.run_id, "test/nll")
    assert sorted(m.step for m in history) == [1, 2]


def test_experiment_and_runs_are_described(monkeypatch, tmp_path):
    """mlflow.note.content: the experiment's paragraph (a user's own kept), and each run's
    objective, k, test NLL and verdicts as they are measured."""
    from test_measurements import record

    from vaelab import report
    from vaelab.config import EvaluateConfig

    monkeypatch.chdir(tmp_path)  # a sqlite store's artifacts go to ./mlruns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client, exp_id = tracking.connect("e")
    exp = client.get_experiment(exp_id)
    assert "test/nll" in exp.tags[tracking.NOTE]
    view = json.loads(exp.tags["mlflow.sharedViewState.vaelab"])  # the README's link
    assert view["orderByKey"] == "metrics.`test/nll`" and view["selectedColumns"][0] == view[
        "orderByKey"]
    client.set_experiment_tag(exp_id, tracking.NOTE, "my own words")
    client, exp_id = tracking.connect("e")
    assert client.get_experiment(exp_id).tags[tracking.NOTE] == "my own words"

    with tracking.model_run("e", "vae", {"k": 1}, {"objective": "elbo_analytic", "k": 1}) as log:
        note = client.get_run(log.run_id).data.tags[tracking.NOTE]
        assert "objective `elbo_analytic`, k = 1" in note and "not evaluated yet" in note
    log, _ = _evaluated("e", "iwae", 200, 50, 95.0)
    note = client.get_run(log.run_id).data.tags[tracking.NOTE]
    assert "Test NLL 95.14 nats (L_200 on 50 test digits)" in note
    r = dataclasses.replace(record("iwae"), run=log.describe())
    claims = [report.Claim(1, "t", "rule", "ev", report.HOLDS),
              report.Claim(10, "t", "rule", "ev", report.FAILS)]
    j = report.Judgement({}, {}, claims, ["3 of 3280 epochs"], EvaluateConfig(), 50, 4000)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.md").write_text("r")
    assert report.log_to_runs(client, {"iwae": r}, j, tmp_path / "report") == ["iwae"]
    note = client.get_run(log.run_id).data.tags[tracking.NOTE]
    assert ("Claims (`report/report.md`): 1 HOLDS (indicative); 10 DOES NOT HOLD (indicative)"
            in note and "Test NLL 95.14" in note and "3 of 3280 epochs" in note)


def test_logged_model_is_named_after_the_model_with_its_test_metrics(monkeypatch, tmp_path):
    import keras
    import numpy as np

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # the store's artifacts go to ./mlruns
    x = keras.Input((784,), name="x")
    net = keras.Model(x, keras.layers.Dense(784, activation="sigmoid")(x))
    with tracking.model_run("e", "vae", {"k": 1}, {}) as log:
        log.keras_model(net, np.zeros((2, 28, 28), np.uint8),
                        name=tracking.logged_model_name("vae"))
    log.test_metrics({"nll": 90.5, "active_units": 12}, "L_5000 on 500 test digits")
    model_id = log.logged_model_id()
    model = log.client.get_logged_model(model_id)
    assert model.name == "vae" and model.source_run_id == log.run_id
    assert {m.key: m.value for m in model.metrics} == {"test/nll": 90.5,
                                                       "test/active_units": 12}
    assert tracking.logged_model_name("model") != "model"


def test_a_store_failing_on_the_first_description_leaves_no_run_running(monkeypatch, tmp_path):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client, exp_id = tracking.connect("e")
    real = MlflowClient.set_tag

    def full(self, run_id, key, value, *a, **kw):
        if key == tracking.NOTE:
            raise OSError("disk full")
        return real(self, run_id, key, value, *a, **kw)

    monkeypatch.setattr(MlflowClient, "set_tag", full)
    with pytest.raises(tracking.TrackingError, match="describing the run"):
        with tracking.model_run("e", "vae", {"k": 1}, {}):
            raise AssertionError("not reached")
    [run] = client.search_runs([exp_id])
    assert run.info.status == "FAILED"


def _lines_traced(fn, at=None, then=None):
    """Run fn() counting the Python lines it executes (its callees' too); call then() at
    line number `at`. Returns the count."""
    n = 0

    def tracer(frame, event, arg):
        nonlocal n
        if event == "line":
            n += 1
            if n == at:
                then()
        return tracer

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return n


def test_a_stop_anywhere_in_a_store_write_still_fails_the_run(monkeypatch, tmp_path):
    """SIGTERM (also the one sent when the dvc parent dies) landing at some lines of a
    sqlite write left its transaction open: the store stayed locked, marking the run FAILED
    met "database is locked" and the run stayed RUNNING (seen in CI). A stop now waits for
    the write to end. Checked at 100 points spread over one write, each in a run of its own."""
    import signal

    from vaelab import cli

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client, exp_id = tracking.connect("e")

    def trial(at=None):
        lines, sent = [], []

        def stop():
            sent.append(at)
            os.kill(os.getpid(), signal.SIGTERM)

        def main():
            with tracking.model_run("e", "vae", {"k": 1}, {}) as log:
                log.metrics({"train_bound": -101.0}, step=1)
                lines.append(_lines_traced(
                    lambda: log.metrics({"train_bound": -102.0}, step=2), at, stop))
                log.metrics({"train_bound": -103.0}, step=3)

        try:
            cli.run(main, "train")
        except SystemExit as e:
            assert e.code == 143
        [run] = client.search_runs([exp_id], max_results=1, order_by=["start_time DESC"])
        return lines, sent, run

    [length], _, run = trial()
    assert run.info.status == "FINISHED"
    stopped = 0
    for at in np.linspace(1, length, 100).astype(int):
        lines, sent, run = trial(at)
        if not sent:  # this write ran fewer lines than the first (caches warm): no stop
            assert run.info.status == "FINISHED"
            continue
        stopped += 1
        assert not lines, f"a stop at line {at} of {length} was lost"
        assert run.info.status == "FAILED", f"a stop at line {at} of {length}"
        history = client.get_metric_history(run.info.run_id, "train_bound")
        assert [m.value for m in history] in ([-101.0], [-101.0, -102.0]), f"at line {at}"
    assert stopped >= 50, stopped


def _sigmoid(t):
    return 1 / (1 + np.exp(-np.asarray(t, np.float64)))


def test_the_logged_model_takes_digits_as_stored_and_gives_pixel_probabilities(
        monkeypatch, tmp_path):
    """What a user gets from `mlflow.pyfunc.load_model(uri).predict(x)`: uint8 grey values
    (as `prepare` stores them, [N, 28, 28]), uint8 bits [N, 784] and floats in [0, 1] all
    work, and the output is sigmoid(decoder logits) at the posterior mean, computed here
    from the two networks by hand."""
    import keras
    import mlflow

    from vaelab import models
    from vaelab.config import ModelConfig

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # the store's artifacts go to ./mlruns
    keras.utils.set_random_seed(0)
    vae = models.VAE.build(ModelConfig(latent=3, hidden=(16,)))
    x_in = keras.Input((784,), name="x")
    grey = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    bits = (grey.reshape(5, 784) > 127).astype(np.uint8)
    with tracking.model_run("e", "vae", {"k": 1}, {}) as log:
        log.keras_model(keras.Model(x_in, vae.reconstruct(x_in)), grey[:2])
    [logged] = mlflow.search_logged_models(experiment_ids=[log.experiment_id],
                                           output_format="list")
    model = mlflow.pyfunc.load_model(logged.model_uri)

    def by_hand(x):
        loc = np.asarray(vae.encoder(x)[0])  # the posterior mean
        return _sigmoid(vae.decoder(loc))

    unit = grey.reshape(5, 784).astype(np.float32) / 255
    for given, x in [(grey, unit), (grey.reshape(5, 784), unit), (unit, unit),
                     (bits, bits.astype(np.float32)), (bits.astype(bool), bits.astype(np.float32))]:
        out = model.predict(given)
        assert out.dtype == np.float32 and out.shape == (5, 784)
        np.testing.assert_allclose(out, by_hand(x), atol=1e-5)
    assert "pixel probabilities" in model.metadata.metadata["output"]
    for bad, says in [(grey.astype(np.float32), "in [0, 1]"), (grey[:, :27], "[N, 28, 28]"),
                      (grey.astype(np.int64) - 1, "0..255")]:
        with pytest.raises(ValueError, match=re.escape(says)):
            model.predict(bad)


def test_a_gaussian_models_logged_output_is_its_mean():
    import keras

    from vaelab import models
    from vaelab.config import ModelConfig

    keras.utils.set_random_seed(0)
    vae = models.VAE.build(ModelConfig(latent=3, hidden=(16,), decoder="gaussian"))
    x_in = keras.Input((784,), name="x")
    x = np.random.default_rng(1).random((4, 784)).astype(np.float32)
    loc, _ = vae.decoder(np.asarray(vae.encoder(x)[0]))
    np.testing.assert_allclose(keras.Model(x_in, vae.reconstruct(x_in)).predict(x, verbose=0),
                               np.asarray(loc), atol=1e-6)
