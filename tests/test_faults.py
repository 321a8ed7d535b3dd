"""Faults and hostile input (issue 14), in process: stale or unreadable checkpoints, a
diverging run, damaged stores and model files, a full disk, SIGTERM, absurd sizes. Each
ends in one line naming the file or setting, nothing good overwritten, no run RUNNING.
The cases that need the real stage scripts or DVC are in test_faults_stages.py."""
from __future__ import annotations

import errno
import io
import json
import os
import signal

from vaelab.quiet import silence_tf

silence_tf()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vaelab import cli, models, tracking  # noqa: E402
from vaelab import data as vdata  # noqa: E402
from vaelab import io as vio  # noqa: E402
from vaelab import train as vtrain  # noqa: E402
from vaelab.config import ModelConfig, ParamsError, parse_params  # noqa: E402


def tiny_run(**train_over):
    params = parse_params({
        "model": {"latent": 5, "hidden": [20]},
        "train": {"epochs": 2, "batch_size": 50, **train_over},
        "models": {"vae": {"objective": "elbo_analytic", "k": 1}},
    })
    return params.models["vae"]


def quiet() -> vtrain.Progress:
    return vtrain.Progress("vae", 1, io.StringIO())


@pytest.fixture(scope="module")
def digits():
    x, _ = vdata.load_source("mnist5k")
    return x[:600], x[600:700]


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# ---------------------------------------------------------------------------------------
# checkpoints: other code or data, unreadable files

def saved_checkpoint(digits, path, fp):
    x_train, x_valid = digits
    vtrain.train(tiny_run(epochs=1), x_train, x_valid, checkpoint=path,
                 checkpoint_extra={"fingerprint": fp}, progress=quiet())
    return path


def test_fingerprint_follows_code_and_data(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.npz").write_bytes(b"a")
    code = tmp_path / "train.py"
    code.write_text("x = 1\n")
    fp = vtrain.fingerprint({"vaelab/train.py": code}, tmp_path / "data")
    assert fp == vtrain.fingerprint({"vaelab/train.py": code}, tmp_path / "data")
    code.write_text("x = 1  # a comment changes the code too\n")
    assert vtrain.fingerprint({"vaelab/train.py": code}, tmp_path / "data")["code"] != fp["code"]
    (tmp_path / "data" / "train.npz").write_bytes(b"b")
    assert vtrain.fingerprint({"vaelab/train.py": code}, tmp_path / "data")["data"] != fp["data"]


def test_checkpoint_of_other_code_or_data_is_discarded(digits, tmp_path):
    fp = {"code": {"vaelab/train.py": "1"}, "data": {"train.npz": "2"}}
    ckpt = saved_checkpoint(digits, tmp_path / "c.npz", fp)
    said = []
    assert vtrain.open_checkpoint(ckpt, fp, said.append).meta["epoch"] == 1 and said == []
    for other, named in [({**fp, "code": {"vaelab/train.py": "X"}}, "code vaelab/train.py"),
                         ({**fp, "data": {"train.npz": "X"}}, "data train.npz")]:
        saved_checkpoint(digits, ckpt, fp)
        said = []
        assert vtrain.open_checkpoint(ckpt, other, said.append) is None
        assert not ckpt.exists(), "a stale checkpoint must not stay to be resumed later"
        assert named in one_line("\n".join(said)) and "discarded" in said[0]
    # A checkpoint written before fingerprints existed is stale too.
    saved_checkpoint(digits, ckpt, fp)
    with np.load(ckpt) as z:
        arrays = dict(z)
    arrays["meta"] = np.frombuffer(json.dumps({"epoch": 1, "history": []}).encode(), np.uint8)
    np.savez(ckpt, **arrays)
    assert vtrain.open_checkpoint(ckpt, fp, said.append) is None and not ckpt.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "flipped"])
def test_unreadable_checkpoint_is_set_aside(digits, tmp_path, damage):
    fp = {"code": {}, "data": {}}
    ckpt = saved_checkpoint(digits, tmp_path / "c.npz", fp)
    blob = ckpt.read_bytes()
    if damage == "truncated":
        ckpt.write_bytes(blob[:len(blob) // 2])
    elif damage == "empty":
        ckpt.write_bytes(b"")
    else:  # zip directory intact, a member's bytes damaged: only its CRC tells
        mid = len(blob) // 3
        ckpt.write_bytes(blob[:mid] + bytes(b ^ 0xFF for b in blob[mid:mid + 64])
                         + blob[mid + 64:])
    said = []
    assert vtrain.open_checkpoint(ckpt, fp, said.append) is None
    assert not ckpt.exists() and (tmp_path / "c.npz.bad").read_bytes() != blob
    line = one_line("\n".join(said))
    assert "unreadable" in line and "c.npz.bad" in line
    # ...and training then starts from epoch 1 instead of failing on every retrain.
    x_train, x_valid = digits
    r = vtrain.train(tiny_run(epochs=1), x_train, x_valid, checkpoint=ckpt, progress=quiet())
    assert r.resumed_from == 0 and vtrain.checkpoint_meta(ckpt)["epoch"] == 1


def test_full_disk_keeps_the_previous_checkpoint(digits, tmp_path, monkeypatch):
    fp = {"code": {}, "data": {}}
    ckpt = saved_checkpoint(digits, tmp_path / "c.npz", fp)
    before = ckpt.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    x_train, x_valid = digits
    with pytest.raises(OSError) as err:
        vtrain.train(tiny_run(epochs=1, seed=1), x_train, x_valid, checkpoint=tmp_path / "n.npz",
                     progress=quiet())
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "n.npz")
    with pytest.raises(OSError):
        vio.write_json(ckpt, {"overwrite": True})
    assert ckpt.read_bytes() == before, "a failed write replaced a good file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"], "temp file left"


# ---------------------------------------------------------------------------------------
# divergence without NaN

def test_healthy_runs_stay_above_the_divergence_floor(digits):
    """Epoch 1 of a tiny healthy run is the closest a healthy run comes to the floor."""
    x_train, x_valid = digits
    floor = vtrain.diverged_below(tiny_run())
    assert floor == pytest.approx(-2 * 784 * np.log(2))
    r = vtrain.train(tiny_run(epochs=1, batch_size=100), x_train, x_valid, progress=quiet())
    assert floor < r.history[0]["valid_bound"] < -400


def test_learning_rate_1000_stops_as_diverged(digits, tmp_path):
    x_train, x_valid = digits
    ckpt = tmp_path / "c.npz"
    with pytest.raises(vtrain.DivergedError) as err:
        vtrain.train(tiny_run(learning_rate=1000.0, checkpoint_every=1), x_train, x_valid,
                     checkpoint=ckpt, progress=quiet())
    msg = str(err.value)
    assert "\n" not in msg
    for word in ("'vae'", "diverged at epoch 1", "steps 1-12, 12/epoch", "learning_rate=1000",
                 "-1087", "last good checkpoint"):
        assert word in msg, (word, msg)
    assert not ckpt.exists(), "the exploded epoch must not be checkpointed"


def test_explosion_at_epoch_3_keeps_the_checkpoint_of_epoch_2(digits, tmp_path, monkeypatch):
    x_train, x_valid = digits
    real = vtrain.evaluate_bound
    calls = []

    def exploding(*a, **kw):
        out = real(*a, **kw)
        if "bound" not in out:  # the shared validation curves (ELBO, L_k), not the own bound
            return out
        calls.append(1)
        return {**out, "bound": -5e6} if len(calls) == 3 else out

    monkeypatch.setattr(vtrain, "evaluate_bound", exploding)
    ckpt = tmp_path / "c.npz"
    seen = []
    with pytest.raises(vtrain.DivergedError, match="epoch 3 .steps 25-36"):
        vtrain.train(tiny_run(epochs=4, checkpoint_every=1), x_train, x_valid, checkpoint=ckpt,
                     on_epoch=lambda logs: seen.append(logs["epoch"]), progress=quiet())
    assert seen == [1, 2], "the diverged epoch is neither logged nor checkpointed"
    assert vtrain.checkpoint_meta(ckpt)["epoch"] == 2


def test_gaussian_decoders_are_exempt():
    p = parse_params({"data": {"binarize": "none"}, "model": {"decoder": "gaussian"},
                      "models": {"g": {"objective": "elbo_analytic"}}})
    assert vtrain.diverged_below(p.models["g"]) is None


# ---------------------------------------------------------------------------------------
# MLflow stores that cannot be used

@pytest.fixture
def store(monkeypatch, tmp_path):
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    return db


@pytest.mark.parametrize("content, words", [(b"", "empty (0 bytes)"),
                                            (b"garbage" * 100, "not an SQLite database")])
def test_zero_byte_or_garbage_store_is_refused(store, content, words):
    store.write_bytes(content)
    with pytest.raises(tracking.TrackingError) as err:
        tracking.connect("e")
    msg = str(err.value)
    assert words in msg and str(store) in msg and "\n" not in msg
    assert store.read_bytes() == content, "the damaged store must be left for the user"


def test_store_under_a_file_is_refused(monkeypatch, tmp_path):
    """What a read-only folder shows a non-root user, testable as root: no folder to write."""
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}")
    with pytest.raises(tracking.TrackingError, match="missing or not writable"):
        tracking.connect("e")


def test_store_failing_mid_run_is_one_line_and_the_run_failed(store, monkeypatch):
    """An immutable or full store (or a dead server) fails the first write after start:
    one TrackingError line, and the run is FAILED, not RUNNING, where the store answers."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with pytest.raises(tracking.TrackingError) as err:
        with tracking.model_run("e", "vae", {"k": 1}, {}) as log:
            run_id = log.run_id

            def readonly(self, *a, **kw):
                raise MlflowException("(sqlite3.OperationalError) attempt to write a readonly "
                                      "database\n[SQL: INSERT ...]\n(Background ...)")

            monkeypatch.setattr(MlflowClient, "log_batch", readonly)
            log.metrics({"valid_bound": -100.0}, step=1)
    msg = str(err.value)
    assert "\n" not in msg and "readonly database" in msg and str(store) in msg
    assert MlflowClient().get_run(run_id).info.status == "FAILED"


def test_store_gone_when_marking_the_run_failed_keeps_the_real_error(store, monkeypatch):
    from mlflow.tracking import MlflowClient

    class Dead(Exception):
        pass

    def dead(self, *a, **kw):
        raise Dead("connection refused")

    with pytest.raises(ValueError, match="the real error"):
        with tracking.model_run("e", "vae", {"k": 1}, {}):
            monkeypatch.setattr(MlflowClient, "set_terminated", dead)
            raise ValueError("the real error")


def test_failed_training_run_is_never_evaluated(store, tmp_path):
    """A model folder whose run FAILED (diverged, interrupted) gets no verdict."""
    client, exp_id = tracking.connect("e")
    run = client.create_run(exp_id, run_name="vae")
    client.set_terminated(run.info.run_id, status="FAILED")
    folder = tmp_path / "models" / "vae"
    folder.mkdir(parents=True)
    (folder / "mlflow.json").write_text(json.dumps(
        {"run_id": run.info.run_id, "experiment_id": exp_id}))
    with pytest.raises(tracking.TrackingError) as err:
        tracking.RunLogger.of_model(folder, client)
    assert "FAILED" in str(err.value) and "dvc repro -f train@vae" in str(err.value)
    client.set_terminated(run.info.run_id, status="FINISHED")
    assert tracking.RunLogger.of_model(folder, client).run_id == run.info.run_id
    (folder / "mlflow.json").write_text("{not json")
    with pytest.raises(tracking.TrackingError, match="damaged"):
        tracking.RunLogger.of_model(folder, client)


# ---------------------------------------------------------------------------------------
# damaged model files, absurd sizes

def test_damaged_encoder_names_the_file(tmp_path):
    cfg = ModelConfig(latent=3, hidden=(8,))
    folder = tmp_path / "vae"
    models.save(folder, models.build_encoder(cfg), models.build_decoder(cfg), {"k": 1})
    models.load(folder)  # intact: loads
    blob = (folder / "encoder.keras").read_bytes()
    (folder / "encoder.keras").write_bytes(blob[:len(blob) // 2])
    with pytest.raises(models.DamagedModelError) as err:
        models.load(folder)
    msg = str(err.value)
    assert str(folder / "encoder.keras") in msg and "damaged" in msg and "\n" not in msg
    assert "not found" not in msg.lower() and "train@vae" in msg


def test_huge_hidden_layers_are_refused_naming_model_hidden():
    from vaelab import fit as stage

    run = parse_params({"model": {"hidden": [100000, 100000]},
                        "models": {"vae": {"objective": "elbo_analytic"}}}).models["vae"]
    if cli.available_bytes() is None:
        pytest.skip("psutil cannot tell the available memory here")
    with pytest.raises(stage.OutOfMemoryError) as err:
        stage.check_memory(run)
    assert "model.hidden [100000, 100000]" in str(err.value) and "\n" not in str(err.value)
    stage.check_memory(tiny_run())  # the usual sizes pass


def test_absurd_evaluate_k_is_refused_and_a_slow_one_warned(monkeypatch, capsys):
    """Refused by `check` (before any training) and again by evaluate; warned in evaluate."""
    from vaelab import cost as check

    monkeypatch.setattr(cli, "available_bytes", lambda: 16 * 2**30)
    raw = {"models": {n: {"objective": "elbo_analytic"} for n in ("a", "b", "c", "d")}}
    with pytest.raises(ParamsError) as err:
        check.check_cost(parse_params({**raw, "evaluate": {"k": 100_000_000}}))
    assert "evaluate.k" in str(err.value) and "GiB" in str(err.value)
    check.check_cost(parse_params({**raw, "evaluate": {"k": 1_000_000}}), warn_as="evaluate")
    line = one_line(capsys.readouterr().out)
    assert line.startswith("evaluate: warning:") and "hours" in line
    check.check_cost(parse_params(raw), warn_as="evaluate")  # the default: no word
    assert capsys.readouterr().out == ""


def test_heartbeat_reports_a_long_computation(capsys):
    import time

    from stages import evaluate as stage

    with stage.heartbeat("vae", expected_s=42, every_s=0.05):
        time.sleep(0.3)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) >= 2 and all(line.startswith("evaluate: vae: still computing")
                                   for line in lines)
    assert "about 42s" in lines[0]
    with stage.heartbeat("vae", expected_s=1, every_s=10):
        pass  # a short one says nothing, and does not wait for the period
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------------------------------
# how a stage ends: cli.run

def test_full_disk_is_one_line_exit_1(capsys):
    def main():
        raise OSError(errno.ENOSPC, "No space left on device", "models/vae")

    with pytest.raises(SystemExit) as exit_:
        cli.run(main, "train")
    assert exit_.value.code == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("train: error: No space left on device writing models/vae")


def test_sigterm_unwinds_like_ctrl_c(capsys, store):
    """SIGTERM raises inside main: `finally`/`except BaseException` blocks run (the MLflow
    run is marked FAILED), then one line and exit status 143."""
    from mlflow.tracking import MlflowClient

    seen = {}

    def main():
        with tracking.model_run("e", "vae", {"k": 1}, {}) as log:
            seen["run"] = log.run_id
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between two bytecodes
                pass
            raise AssertionError("SIGTERM did not interrupt")

    old = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.run(main, "train")
    finally:
        signal.signal(signal.SIGTERM, old)
    assert exit_.value.code == 143
    assert "terminated (SIGTERM)" in one_line(capsys.readouterr().err)
    assert MlflowClient().get_run(seen["run"]).info.status == "FAILED"



def test_out_of_memory_while_training_names_model_hidden(tmp_path, monkeypatch, capsys):
    """TensorFlow's ResourceExhaustedError (what [100000, 100000] gives on a GPU, where
    the host-memory check does not look) as one line naming model.hidden; run FAILED."""
    import sys

    import tensorflow as tf
    import yaml
    from mlflow.tracking import MlflowClient

    from stages import train as stage
    from vaelab.config import DataConfig

    vdata.prepare(DataConfig(valid_size=100, test_size=100), tmp_path / "prepared")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "model": {"latent": 5, "hidden": [20]}, "train": {"epochs": 1},
        "models": {"vae": {"objective": "elbo_analytic"}}}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))

    def exhausted(*a, **kw):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor "
                                               "with shape[100000,100000]\n(long trace)")

    monkeypatch.setattr(vtrain, "train", exhausted)  # the stage imports vaelab.train in main()
    monkeypatch.setattr(sys, "argv", [
        "train", "--params", str(tmp_path / "params.yaml"), "--name", "vae",
        "--data", str(tmp_path / "prepared"), "--out", str(tmp_path / "models" / "vae"),
        "--metrics", str(tmp_path / "m.json"), "--curve", str(tmp_path / "c.csv")])
    with pytest.raises(SystemExit) as exit_:
        cli.run(stage.main, "train")
    assert exit_.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("train: error: model.hidden [20] (model 'vae'): out of memory")
    assert "ResourceExhaustedError" in line
    [run] = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("vae-iwae")
                                        .experiment_id])
    assert run.info.status == "FAILED"
    assert not (tmp_path / "models").exists()
