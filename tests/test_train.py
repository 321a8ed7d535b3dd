"""Training as a pure function of its config: determinism on the CPU, resume == never
interrupted (in-process and through the real stage script killed with SIGKILL), divergence
and params mistakes as one-line errors, atomic outputs, damaged prepared data."""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from vaelab.quiet import silence_tf

silence_tf()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import ops  # noqa: E402

from repo_copy import env_for, make_repo, merge  # noqa: E402
from vaelab import cli  # noqa: E402
from vaelab import data as vdata  # noqa: E402
from vaelab import io as vio  # noqa: E402
from vaelab import models  # noqa: E402
from vaelab import train as vtrain  # noqa: E402
from vaelab.config import DataConfig, parse_params  # noqa: E402


TINY_MODEL = {"latent": 5, "hidden": [20]}


# ---------------------------------------------------------------------------------------
# helpers (in-process)

@pytest.fixture(scope="module")
def digits():
    """~600 train / 100 valid real digits, uint8 [N, 28, 28]."""
    x, _ = vdata.load_source("mnist5k")
    return x[:600], x[600:700]


def tiny_run(**train_over):
    params = parse_params({
        "model": TINY_MODEL,
        "train": {"epochs": 2, "batch_size": 50, **train_over},
        "models": {"vae": {"objective": "elbo_analytic", "k": 1}},
    })
    return params.models["vae"]


def quiet() -> vtrain.Progress:
    return vtrain.Progress("vae", 1, io.StringIO())


def test_training_improves_the_bound_by_far_more_than_its_monte_carlo_error(digits):
    """The point of it all: a few epochs of IWAE k=5 on 600 real digits raise the ELBO of
    held-out digits over the untrained model (the same seeded initial weights train.train
    starts from), by more than 20 standard errors of the difference (each digit's ELBO from
    20 posterior draws, fixed test bits). A step that does not descend the loss, or one
    applied to the wrong variables, fails it."""
    from vaelab import evaluate, models

    x_train, x_valid = digits
    run = parse_params({"model": TINY_MODEL, "train": {"epochs": 3, "batch_size": 50},
                        "models": {"iwae": {"objective": "iwae", "k": 5}}}).models["iwae"]
    xb = vtrain.eval_inputs(x_valid, "static", 7)

    def elbo(model) -> tuple[np.ndarray, np.ndarray]:
        m = models.VAE(model.encoder, model.decoder, info=run.as_flat_dict())
        lw, _ = evaluate.log_weights(m, xb, 20, 20, 100, seed=3)
        return lw.mean(0), lw.var(0, ddof=1) / len(lw)  # per digit, and its variance

    keras.utils.set_random_seed(run.train.seed)  # as train.train does before it builds
    before, var_before = elbo(models.VAE.build(run.model))
    after, var_after = elbo(vtrain.train(run, x_train, x_valid, progress=quiet()))
    gain, se = (after - before).mean(), np.sqrt((var_before + var_after).sum()) / len(xb)
    assert gain > 20 * se, (gain, se)  # measured: -545.8 -> -435.3 nats, 110.5 +- 0.39


def weights(result) -> list[np.ndarray]:
    return result.encoder.get_weights() + result.decoder.get_weights()


def bounds(history: list[dict]) -> list[dict]:
    """Everything in the history but the wall-clock figures."""
    return [{k: v for k, v in h.items() if k not in ("seconds", "samples_per_s")}
            for h in history]


def all_equal(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y)
                                    for x, y in zip(a, b))


class Stop(Exception):
    """Stands for a kill between two epochs."""


def killed_after(epoch: int, run, x_train, x_valid, ckpt: Path, **train_kw) -> dict:
    """Train `run` with checkpoints at `ckpt` and stop after epoch `epoch` as a kill would
    (nothing of that epoch is written unless it was a checkpoint epoch): the checkpoint's
    meta, which the resumed run then starts from."""
    def stop(logs):
        if logs["epoch"] == epoch:
            raise Stop

    with pytest.raises(Stop):
        vtrain.train(run, x_train, x_valid, on_epoch=stop, checkpoint=ckpt, progress=quiet(),
                     **train_kw)
    return vtrain.checkpoint_meta(ckpt)


# ---------------------------------------------------------------------------------------
# 1. determinism

def test_same_config_gives_identical_weights_and_history(digits):
    x_train, x_valid = digits
    run = tiny_run()
    a = vtrain.train(run, x_train, x_valid, progress=quiet())
    b = vtrain.train(run, x_train, x_valid, progress=quiet())
    assert len(a.history) == len(b.history) == 2
    assert all_equal(weights(a), weights(b)), "two runs of one config differ"
    assert bounds(a.history) == bounds(b.history)
    assert all(np.isfinite(h["valid_bound"]) for h in a.history)
    # It did train: the weights are not the initial ones.
    init = models.VAE.build(run.model)
    assert not all_equal(weights(a), init.encoder.get_weights() + init.decoder.get_weights())


def one_step(digits, entry: dict) -> list[np.ndarray]:
    """Weights after exactly one Adam step (one epoch of one batch) of a models: entry."""
    params = parse_params({"model": TINY_MODEL, "models": {"m": entry},
                           "train": {"epochs": 1, "batch_size": 50, "valid_k": 2}})
    x_train, x_valid = digits
    return weights(vtrain.train(params.models["m"], x_train[:50], x_valid[:20],
                                progress=quiet()))


def same_step(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    """Bit-identical on TF. XLA (JAX) fuses the one-target and the two-target gradient
    graphs differently: differences of up to 3e-8 were measured, next to Adam's first step
    of ~1e-3 per weight, so 1e-6 separates rounding from another gradient."""
    if keras.backend.backend() != "jax":
        return all_equal(a, b)
    return len(a) == len(b) and all(np.allclose(x, y, rtol=0, atol=1e-6) for x, y in zip(a, b))


def test_two_gradient_targets_train_each_network_on_its_own(digits):
    """PIWAE(m, k) in one step: its decoder moves exactly as IWAE-(m k)'s, its encoder exactly
    as MIWAE(m, k)'s (Adam's update of a weight depends on that weight's gradient only, and
    the three draw the same m k samples from one seed)."""
    n_enc = len(models.VAE.build(tiny_run().model).encoder.get_weights())
    piwae = one_step(digits, {"objective": "piwae", "k": 3, "m": 2})
    iwae = one_step(digits, {"objective": "iwae", "k": 6})
    miwae = one_step(digits, {"objective": "miwae", "k": 3, "m": 2})
    assert same_step(piwae[n_enc:], iwae[n_enc:])
    assert same_step(piwae[:n_enc], miwae[:n_enc])
    assert not same_step(iwae[:n_enc], miwae[:n_enc])  # the targets really differ


@pytest.mark.parametrize("entry", [{"objective": "iwae", "k": 4, "estimator": "dreg"},
                                   {"objective": "ciwae", "k": 4, "beta": 0.5, "estimator": "stl"}])
def test_estimators_train_deterministically_and_move_only_the_encoder_differently(digits, entry):
    x_train, x_valid = digits
    params = parse_params({"model": TINY_MODEL, "models": {"m": entry},
                           "train": {"epochs": 2, "batch_size": 50, "valid_k": 2}})
    a = vtrain.train(params.models["m"], x_train, x_valid, progress=quiet())
    b = vtrain.train(params.models["m"], x_train, x_valid, progress=quiet())
    assert all_equal(weights(a), weights(b)) and bounds(a.history) == bounds(b.history)
    assert all(np.isfinite(h["valid_bound"]) for h in a.history)
    # after one step the decoder is the standard estimator's, the encoder is not
    n_enc = len(models.VAE.build(tiny_run().model).encoder.get_weights())
    est = one_step(digits, entry)
    std = one_step(digits, {**entry, "estimator": "standard"})
    assert same_step(est[n_enc:], std[n_enc:]) and not same_step(est[:n_enc], std[:n_enc])


@pytest.mark.parametrize("per_call", [3, 50])
def test_steps_per_execution_changes_nothing(digits, per_call):
    """Several steps per compiled call are a speed lever only: 590 digits in batches of 50
    are 11 full batches and a short one, so calls of 3 leave 2 full batches over, and the
    short batch goes alone; the weights and history equal one step per call, bit for bit."""
    x_train, x_valid = digits
    x_train = x_train[:590]
    one = vtrain.train(tiny_run(steps_per_execution=1), x_train, x_valid, progress=quiet())
    many = vtrain.train(tiny_run(steps_per_execution=per_call), x_train, x_valid,
                        progress=quiet())
    assert all_equal(weights(one), weights(many))
    assert bounds(one.history) == bounds(many.history)


VALID_KEYS = {"valid_bound", "valid_distortion", "valid_rate", "valid_active_units",
              "valid_posterior_std", "valid_elbo", "valid_Lk"}


def test_valid_every_validates_the_grid_only_and_trains_bit_identically(digits):
    """valid_every=3 over 7 epochs validates 1, 2, 3, 6 and 7 only: those epochs' logs equal
    every-epoch validation's, the others have no valid_* key and no `valid bound` in the
    progress line, and the weights are bit-identical (validation draws from its own
    stateless seeds and never touches training's state)."""
    x_train, x_valid = digits
    every = vtrain.train(tiny_run(epochs=7), x_train, x_valid, progress=quiet())
    shown = io.StringIO()
    sparse = vtrain.train(tiny_run(epochs=7, valid_every=3), x_train, x_valid,
                          progress=vtrain.Progress("vae", 7, shown))
    validated = [1, 2, 3, 6, 7]
    assert [h["epoch"] for h in sparse.history if "valid_Lk" in h] == validated
    for a, b in zip(bounds(sparse.history), bounds(every.history)):
        assert VALID_KEYS <= set(b)
        assert set(b) - set(a) == (set() if a["epoch"] in validated else VALID_KEYS)
        assert a == {k: v for k, v in b.items() if k in a}, a["epoch"]
    assert all_equal(weights(sparse), weights(every)), "skipping validation moved the weights"
    lines = shown.getvalue().splitlines()
    assert ["valid bound" in line for line in lines] == [e in validated for e in range(1, 8)]
    assert every.valid_seconds > 0 and sparse.valid_seconds > 0


def test_different_seed_gives_different_weights(digits):
    x_train, x_valid = digits
    a = vtrain.train(tiny_run(seed=0), x_train, x_valid, progress=quiet())
    b = vtrain.train(tiny_run(seed=1), x_train, x_valid, progress=quiet())
    wa, wb = weights(a), weights(b)
    assert [w.shape for w in wa] == [w.shape for w in wb]
    assert not any(np.array_equal(x, y) for x, y in zip(wa, wb) if x.size > 1 and x.any())
    assert bounds(a.history) != bounds(b.history)


def test_checkpoint_key_follows_the_config():
    assert vtrain.checkpoint_key(tiny_run()) == vtrain.checkpoint_key(tiny_run())
    assert vtrain.checkpoint_key(tiny_run()).startswith("vae-")
    assert vtrain.checkpoint_key(tiny_run()) != vtrain.checkpoint_key(tiny_run(learning_rate=0.01))
    assert vtrain.checkpoint_key(tiny_run()) != vtrain.checkpoint_key(tiny_run(epochs=3))


def test_grey_inputs_are_dequantized_afresh_each_epoch_and_the_rest_unchanged(digits):
    """binarize none (Gaussian decoder): the step is fed (pixel + u) / 256, u drawn again
    every epoch from a stateless seed, validation one fixed draw; the Bernoulli inputs are
    what they were (grey / 255 for dynamic, fixed bits otherwise)."""
    x = digits[0][:30]
    flat = x.reshape(30, 784)
    e1, e2 = (vtrain.train_inputs(x, "none", [2, 0], epoch) for epoch in (1, 2))
    for y in (e1, e2):
        np.testing.assert_array_equal(np.floor(y.astype(np.float64) * 256), flat)
    assert not np.array_equal(e1, e2)
    np.testing.assert_array_equal(e1, vtrain.train_inputs(x, "none", [2, 0], 1))
    assert not np.array_equal(e1, vtrain.train_inputs(x, "none", [2, 1], 1))  # train.seed
    v = vtrain.eval_inputs(x, "none", 3)
    np.testing.assert_array_equal(v, vtrain.eval_inputs(x, "none", 3))
    np.testing.assert_array_equal(np.floor(v.astype(np.float64) * 256), flat)
    np.testing.assert_array_equal(vtrain.train_inputs(x, "dynamic", 2), vdata.to_unit(x))
    np.testing.assert_array_equal(vtrain.train_inputs(x, "static", 2),
                                  vdata.binarize(x, "static", 2).astype(np.float32))
    np.testing.assert_array_equal(vtrain.eval_inputs(x, "dynamic", 3),
                                  vdata.binarize(x, "static", 3).astype(np.float32))


def test_gaussian_training_feeds_each_epoch_its_own_dequantization(digits, monkeypatch):
    x_train, x_valid = digits[0][:100], digits[1][:50]
    params = parse_params({
        "data": {"binarize": "none", "seed": 5},
        "model": {**TINY_MODEL, "decoder": "gaussian"},
        "train": {"epochs": 3, "batch_size": 50, "seed": 7},
        "models": {"g": {"objective": "elbo_analytic", "k": 1}}})
    fed = []
    real = vtrain.train_epoch

    def record(step, xs, *args, **kwargs):
        fed.append(np.asarray(xs))
        return real(step, xs, *args, **kwargs)

    monkeypatch.setattr(vtrain, "train_epoch", record)
    result = vtrain.train(params.models["g"], x_train, x_valid, progress=quiet())
    assert all(np.isfinite(h["valid_bound"]) for h in result.history)
    assert len(fed) == 3
    for epoch, xs in enumerate(fed, 1):  # a pure function of (data.seed + 2, train.seed, epoch)
        np.testing.assert_array_equal(xs, vtrain.train_inputs(x_train, "none", [7, 7], epoch))
    assert not np.array_equal(fed[0], fed[1]) and not np.array_equal(fed[1], fed[2])


# ---------------------------------------------------------------------------------------
# 2. resume == uninterrupted (in-process)

def test_resume_from_checkpoint_equals_uninterrupted(digits, tmp_path):
    x_train, x_valid = digits
    run = tiny_run(epochs=4, checkpoint_every=2)
    ckpt = tmp_path / "ckpt" / "vae.npz"

    meta = killed_after(3, run, x_train, x_valid, ckpt, checkpoint_extra={"note": "x"})
    assert meta["epoch"] == 2 and meta["note"] == "x"
    assert [h["epoch"] for h in meta["history"]] == [1, 2]
    assert not list(ckpt.parent.glob("*.tmp")), "checkpoint temp file left behind"

    seen = []
    resumed = vtrain.train(run, x_train, x_valid, on_epoch=lambda logs: seen.append(logs["epoch"]),
                           checkpoint=ckpt, progress=quiet())
    assert resumed.resumed_from == 2
    assert seen == [3, 4], "only the missing epochs are trained"
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert vtrain.checkpoint_meta(ckpt)["epoch"] == 4  # the last epoch is always saved

    straight = vtrain.train(run, x_train, x_valid, progress=quiet())
    assert resumed.resumed_from != straight.resumed_from == 0
    assert all_equal(weights(resumed), weights(straight)), "resumed run is not bit-exact"
    assert bounds(resumed.history) == bounds(straight.history)


def test_resume_with_sparse_validation_equals_uninterrupted(digits, tmp_path):
    """valid_every=3, checkpoints every 2 epochs, killed in epoch 5: the checkpoint is of
    epoch 4, which was not validated; the resumed run's history (validated epochs and
    best epoch included) and weights are exactly an uninterrupted run's."""
    x_train, x_valid = digits
    run = tiny_run(epochs=7, valid_every=3, checkpoint_every=2, restore_best=True)
    ckpt = tmp_path / "vae.npz"

    assert killed_after(5, run, x_train, x_valid, ckpt)["epoch"] == 4
    resumed = vtrain.train(run, x_train, x_valid, checkpoint=ckpt, progress=quiet())
    straight = vtrain.train(run, x_train, x_valid, progress=quiet())
    assert resumed.resumed_from == 4 and straight.resumed_from == 0
    assert [h["epoch"] for h in resumed.history if "valid_Lk" in h] == [1, 2, 3, 6, 7]
    assert bounds(resumed.history) == bounds(straight.history)
    assert resumed.best_epoch == straight.best_epoch and resumed.best_epoch in (1, 2, 3, 6, 7)
    assert all_equal(weights(resumed), weights(straight)), "resumed run is not bit-exact"


def test_injected_nan_stops_with_last_good_checkpoint_kept(digits, tmp_path, monkeypatch):
    """A NaN batch in epoch 3: NonFiniteError naming epoch 3, the weights stay finite, the
    checkpoint on disk is still the one of epoch 2."""
    x_train, x_valid = digits
    run = tiny_run(epochs=4, checkpoint_every=1)
    run = dataclasses.replace(run, data=dataclasses.replace(run.data, binarize="static"))
    steps_per_epoch = -(-len(x_train) // run.train.batch_size)
    poison_at = 2 * steps_per_epoch + 3  # the global index of the 4th step of epoch 3
    real_make_step = vtrain.make_step
    seen = {}

    def make_step(model, *args):
        step = real_make_step(model, *args)
        seen["model"] = model

        def poisoned(x, seeds):  # [n, B, 784], [n, 2] = (seed, global step)
            nan_at = ops.where(seeds[:, 1] == poison_at, np.nan, 1.0)[:, None, None]
            return step(x * nan_at, seeds)

        return poisoned

    monkeypatch.setattr(vtrain, "make_step", make_step)
    ckpt = tmp_path / "vae.npz"
    with pytest.raises(vtrain.NonFiniteError) as err:
        vtrain.train(run, x_train, x_valid, checkpoint=ckpt, progress=quiet())
    msg = str(err.value)
    assert f"epoch 3, step 4/{steps_per_epoch}" in msg and "'vae'" in msg
    assert "learning_rate" in msg and "\n" not in msg
    assert vtrain.checkpoint_meta(ckpt)["epoch"] == 2
    model = seen["model"]
    assert all(np.all(np.isfinite(w)) for w in model.encoder.get_weights()
               + model.decoder.get_weights()), "a NaN reached the weights"

    # The kept checkpoint resumes the run: without the poison it ends where an
    # uninterrupted run ends.
    monkeypatch.setattr(vtrain, "make_step", real_make_step)
    resumed = vtrain.train(run, x_train, x_valid, checkpoint=ckpt, progress=quiet())
    straight = vtrain.train(run, x_train, x_valid, progress=quiet())
    assert resumed.resumed_from == 2
    assert all_equal(weights(resumed), weights(straight))


# ---------------------------------------------------------------------------------------
# helpers (stage scripts in a temp copy of the repo; copied from test_pipeline's approach)

STAGE_PARAMS = {
    "data": {"valid_size": 100, "test_size": 100},
    "model": TINY_MODEL,
    # batch 20: ~240 small steps per epoch, slow enough (~0.5 s) to kill mid-run
    "train": {"epochs": 6, "batch_size": 20, "checkpoint_every": 1},
    "models": {"vae": {"objective": "elbo_analytic", "k": 1}},
}


def stage(repo: Path, script: str, *args, check=True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", f"stages.{script}", *args], cwd=repo,
                         capture_output=True, text=True, env=env_for(), timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"{script} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def prepared_repo(dest: Path, over: dict = STAGE_PARAMS) -> Path:
    repo = make_repo(dest, over)
    stage(repo, "prepare")
    return repo


def model_weights(folder: Path) -> list[np.ndarray]:
    return (keras.saving.load_model(folder / "encoder.keras").get_weights()
            + keras.saving.load_model(folder / "decoder.keras").get_weights())


def runs(repo: Path) -> list[tuple]:
    db = repo / "mlflow.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        return con.execute("select name, status, run_uuid from runs").fetchall()


def metric_rows(repo: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    with sqlite3.connect(repo / "mlflow.db") as con:
        return con.execute("select step, value from metrics where run_uuid = ? and key = ? "
                           "order by step", (run_id, key)).fetchall()


def curve(repo: Path, columns=("epoch", "train_bound", "valid_bound")) -> list[list[str]]:
    lines = (repo / "metrics" / "curves" / "vae.csv").read_text().splitlines()
    head = lines[0].split(",")
    keep = [head.index(c) for c in columns]
    return [[row.split(",")[i] for i in keep] for row in lines[1:]]


def logged_steps(repo: Path) -> int:
    """The last epoch the running stage has logged to MLflow (0 before any)."""
    if not (repo / "mlflow.db").exists():
        return 0
    try:
        with sqlite3.connect(repo / "mlflow.db", timeout=1) as db:
            row = db.execute("select max(step) from metrics where key = 'train_bound'").fetchone()
    except sqlite3.Error:  # tables not created yet, or locked for a moment
        return 0
    return row[0] or 0


def checkpoints(repo: Path) -> list[Path]:
    return sorted((repo / ".checkpoints").glob("*.npz"))


# ---------------------------------------------------------------------------------------
# 3. SIGKILL and resume through the real stage script

@pytest.mark.parametrize("backend, valid_every", [("tensorflow", 1), ("jax", 1),
                                                  ("tensorflow", 2)])
def test_killed_stage_resumes_to_the_same_weights_and_one_mlflow_run(tmp_path, backend,
                                                                     valid_every):
    epochs = STAGE_PARAMS["train"]["epochs"]
    # The reference: the same stage, never interrupted, in its own copy.
    # Checkpoints every 3 epochs, and the kill comes once epoch 4 is logged: the resumed run
    # retrains epoch 4 (and 5, if logged too) and must not log them a second time.
    # valid_every 2 validates epochs 1, 2, 4, 6: epoch 5, if logged, has no valid_* metric.
    params = merge(STAGE_PARAMS, {"train": {"checkpoint_every": 3, "backend": backend,
                                            "valid_every": valid_every}})
    ref = prepared_repo(tmp_path / "ref", params)
    stage(ref, "train", "--name", "vae")
    ref_weights = model_weights(ref / "models" / "vae")

    repo = prepared_repo(tmp_path / "killed", params)
    proc = subprocess.Popen([sys.executable, "-m", "stages.train", "--name", "vae"], cwd=repo,
                            env=env_for(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 300
        meta = None
        while time.monotonic() < deadline and proc.poll() is None:
            found = checkpoints(repo)
            meta = vtrain.checkpoint_meta(found[0]) if found else None
            if meta and meta["epoch"] >= 3 and logged_steps(repo) >= 4:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()
    proc.stderr.close()
    assert rc == -signal.SIGKILL, f"the stage was not killed mid-run (rc {rc}):\n{stderr}"
    assert meta is not None and meta["epoch"] == 3
    assert not (repo / "models" / "vae").exists(), "a killed run wrote its model"
    [ckpt] = checkpoints(repo)
    killed_at = vtrain.checkpoint_meta(ckpt)["epoch"]
    assert killed_at == 3
    [(name, status, run_id)] = runs(repo)
    assert (name, status) == ("vae", "RUNNING")  # SIGKILL cannot be caught
    assert vtrain.checkpoint_meta(ckpt)["mlflow_run_id"] == run_id

    out = stage(repo, "train", "--name", "vae")
    assert f"resuming after epoch {killed_at}" in out.stdout
    assert "Traceback" not in out.stderr

    got = model_weights(repo / "models" / "vae")
    assert all_equal(got, ref_weights), "resumed stage is not bit-exact"
    assert curve(repo) == curve(ref)
    assert not checkpoints(repo), "the checkpoint outlived a successful run"
    assert not list(repo.rglob("*.tmp"))

    assert runs(repo) == [("vae", "FINISHED", run_id)], "the resumed run must continue the killed one"
    info = json.loads((repo / "models" / "vae" / "mlflow.json").read_text())
    assert info["run_id"] == run_id
    [(_, _, ref_run)] = runs(ref)
    validated = [e for e in range(1, epochs + 1) if e <= valid_every or e % valid_every == 0
                 or e == epochs]
    for key, expected in (("train_bound", list(range(1, epochs + 1))), ("valid_bound", validated)):
        rows = metric_rows(repo, run_id, key)
        steps = [s for s, _ in rows]
        assert sorted(steps) == expected, f"{key}: each epoch logged once: {steps}"
        assert metric_rows(ref, ref_run, key) == sorted(rows)


# ---------------------------------------------------------------------------------------
# 4. divergence through the stage script

@pytest.mark.parametrize("lr, shown", [
    # 1e18 and above overflow this model within the first steps (measured); 1e30 leaves
    # a wide margin across CPUs.
    (1.0e30, "learning_rate=1e+30"),
    # 1000 stays finite: the bound explodes to about -3e7 instead (the divergence floor)
    (1000.0, "learning_rate=1000"),
], ids=["nan", "exploding-bound"])
def test_diverging_stage_exits_2_with_one_line_and_a_failed_run(tmp_path, lr, shown):
    repo = prepared_repo(tmp_path / "nan", merge(STAGE_PARAMS, {"train": {"learning_rate": lr}}))
    metrics = repo / "metrics" / "train" / "vae.json"  # git keeps the default run's copy
    before = metrics.read_bytes() if metrics.exists() else None
    out = stage(repo, "train", "--name", "vae", check=False)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    line = lines[0]
    assert line.startswith("train: error: ")
    for word in ("vae", "epoch", "step", "learning rate", shown):
        assert word in line, (word, line)
    assert ("non-finite" if lr > 1e6 else "diverged") in line, line
    assert not (repo / "models" / "vae").exists()
    assert (metrics.read_bytes() if metrics.exists() else None) == before, "metrics written"
    assert [(n, s) for n, s, _ in runs(repo)] == [("vae", "FAILED")]
    epoch = int(re.search(r"epoch (\d+)", line).group(1))
    found = checkpoints(repo)
    if epoch == 1:
        assert found == [], "no good epoch, so no checkpoint"
    else:  # checkpoint_every 1: the last good epoch is kept
        assert [vtrain.checkpoint_meta(p)["epoch"] for p in found] == [epoch - 1]


# ---------------------------------------------------------------------------------------
# 5. params mistakes through the stage script

@pytest.mark.parametrize("entry, expect", [
    ({"objective": "elbo_analytic", "k": 0}, r"models\.vae\.k: must be a positive integer, got 0"),
    ({"objective": "elbo_analitic", "k": 1}, r"models\.vae\.objective: .*did you mean 'elbo_analytic'"),
])
def test_params_mistake_exits_2_before_any_run(tmp_path, entry, expect):
    repo = make_repo(tmp_path / "bad", merge(STAGE_PARAMS, {"models": {"vae": entry}}))
    out = stage(repo, "train", "--name", "vae", check=False)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()  # fails before MLflow is touched: no log lines
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("train: error: params.yaml: models.vae.")
    assert re.search(expect, lines[0]), lines[0]
    assert runs(repo) == []
    assert not (repo / "models").exists() and not checkpoints(repo)


# ---------------------------------------------------------------------------------------
# 6. atomic outputs

class Boom(Exception):
    pass


def test_atomic_file_keeps_old_content_when_the_writer_fails(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    with pytest.raises(Boom):
        with vio.atomic_file(path, "w") as f:
            f.write("new, half")
            f.flush()
            assert path.read_text() == "old"  # nothing is visible before the rename
            raise Boom
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"], "temp file left"

    with vio.atomic_file(path, "w") as f:
        f.write("new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_atomic_dir_keeps_old_folder_when_the_writer_fails(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "a.txt").write_text("old")
    with pytest.raises(Boom):
        with vio.atomic_dir(out) as tmp:
            assert tmp != out and tmp.parent == tmp_path
            (tmp / "a.txt").write_text("new")
            (tmp / "b.txt").write_text("new")
            raise Boom
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    assert (out / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "temp folder left"

    with vio.atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "old folder left"


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    """A fresh tmpfs at `folder` (root only: how CI runs, where chmod binds no one);
    skips where mounting is not allowed (a container without CAP_SYS_ADMIN)."""
    folder.mkdir(exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs",
                                            str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield folder
    finally:
        # lazy: detached even while a file in it is still open (an MLflow engine)
        subprocess.run(["umount", "-l", str(folder)], check=True)


@contextlib.contextmanager
def read_only(kind: str, folder: Path, monkeypatch):
    """A folder nobody can write into, three ways: chmod (enforced for non-root users
    only), a read-only mount (enforced for root too), or the kernel's answer injected
    where the atomic writers create their temporary files (runs everywhere)."""
    if kind == "chmod":
        folder.mkdir()
        folder.chmod(0o555)
        try:
            if os.access(folder, os.W_OK):
                pytest.skip("running as root: permissions are not enforced")
            yield
        finally:
            folder.chmod(0o755)
    elif kind == "ro-mount":
        with tmpfs(folder, "ro,size=64k"):
            yield
    else:
        folder.mkdir()
        real_mkstemp, real_mkdtemp = vio.tempfile.mkstemp, vio.tempfile.mkdtemp

        def deny(real):
            def make(*a, dir=None, **kw):
                if Path(dir) == folder:
                    raise PermissionError(errno.EACCES, "Permission denied",
                                          str(folder / "tmpXXXX"))
                return real(*a, dir=dir, **kw)
            return make

        monkeypatch.setattr(vio.tempfile, "mkstemp", deny(real_mkstemp))
        monkeypatch.setattr(vio.tempfile, "mkdtemp", deny(real_mkdtemp))
        yield


@pytest.mark.parametrize("kind", ["chmod", "ro-mount", "injected"])
def test_read_only_output_folder_is_a_clear_error(tmp_path, kind, monkeypatch, capsys):
    folder = tmp_path / "ro"
    with read_only(kind, folder, monkeypatch):
        with pytest.raises(OSError) as err:
            vio.write_json(folder / "m.json", {"a": 1})
        assert err.value.errno in (errno.EACCES, errno.EROFS) and str(folder) in str(err.value)
        with pytest.raises(OSError) as err:
            with vio.atomic_dir(folder / "model") as tmp:
                (tmp / "x").write_text("x")
        assert str(folder) in str(err.value)
        assert list(folder.iterdir()) == []

        def main():
            vio.write_json(folder / "m.json", {"a": 1})

        with pytest.raises(SystemExit) as exit_:
            cli.run(main, "train")
        assert exit_.value.code == 1
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("train: error: ") and str(folder) in line


def test_store_on_a_read_only_mount_is_refused(tmp_path, monkeypatch):
    """A store that cannot be written, as root: a read-only mount (chattr +i's effect on
    the folder; tmpfs has no chattr). Refused at connect, before any run is created."""
    from vaelab import tracking

    with tmpfs(tmp_path / "store", "size=4m") as folder:
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        # created by another process: this one must hold no open file there to remount
        subprocess.run([sys.executable, "-c", "from vaelab import tracking; tracking.connect('e')"],
                       env=env_for(MLFLOW_TRACKING_URI=uri), check=True, capture_output=True)
        size = (folder / "mlflow.db").stat().st_size
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        with pytest.raises(tracking.TrackingError) as err:
            tracking.connect("e")
        assert "not writable" in str(err.value) and str(folder) in str(err.value)
        assert (folder / "mlflow.db").stat().st_size == size


def test_full_disk_keeps_the_old_file_and_says_so(tmp_path, capsys):
    """A real ENOSPC from a 64 KiB tmpfs (root only; test_faults injects it everywhere)."""
    with tmpfs(tmp_path / "small", "size=64k") as small:
        path = small / "metrics.json"
        vio.write_json(path, {"old": True})
        with pytest.raises(OSError) as err:
            vio.write_text(path, "x" * 200_000)
        assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)
        assert json.loads(path.read_text()) == {"old": True}
        assert [p.name for p in small.iterdir()] == ["metrics.json"], "temp file left"

        with pytest.raises(SystemExit) as exit_:
            cli.run(lambda: vio.write_text(path, "x" * 200_000), "evaluate")
        assert exit_.value.code == 1
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"evaluate: error: No space left on device writing {path}")


# ---------------------------------------------------------------------------------------
# 7. damaged prepared data

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    vdata.prepare(DataConfig(valid_size=100, test_size=100), out)
    return out


def test_truncated_prepared_file_names_file_and_fix(prepared, tmp_path):
    shutil.copytree(prepared, tmp_path / "p")
    path = tmp_path / "p" / "test.npz"
    assert len(vdata.load_prepared(tmp_path / "p", "test")["x"]) == 100
    blob = path.read_bytes()
    path.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(vdata.DataError) as err:
        vdata.load_prepared(tmp_path / "p", "test")
    msg = str(err.value)
    assert str(path) in msg and "dvc repro prepare" in msg and "\n" not in msg
    # The other parts are untouched and still load.
    assert len(vdata.load_prepared(tmp_path / "p", "valid")["x"]) == 100


def test_corrupted_prepared_member_names_file_and_fix(prepared, tmp_path):
    """Same length, zip directory intact, but deflated bytes of a member damaged."""
    shutil.copytree(prepared, tmp_path / "p")
    path = tmp_path / "p" / "test.npz"
    blob = bytearray(path.read_bytes())
    mid = len(blob) // 3
    blob[mid:mid + 64] = bytes(b ^ 0xFF for b in blob[mid:mid + 64])
    path.write_bytes(bytes(blob))
    with pytest.raises(vdata.DataError) as err:
        vdata.load_prepared(tmp_path / "p", "test")
    msg = str(err.value)
    assert str(path) in msg and "dvc repro prepare" in msg and "\n" not in msg
