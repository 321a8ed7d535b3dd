"""Burda et al.'s learning-rate schedule, early stopping with restore-best, and objective
switching (init_from): pure functions, tiny in-process runs (TF; the schedule also on JAX
in a subprocess), the config's one-line errors and the DVC dependency of a switched model."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from vaelab.quiet import silence_tf

silence_tf()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from repo_copy import env_for, make_repo  # noqa: E402
from test_backends import run_py  # noqa: E402
from test_train import all_equal, killed_after, quiet, weights  # noqa: E402
from vaelab import data as vdata  # noqa: E402
from vaelab import report  # noqa: E402
from vaelab import train as vtrain  # noqa: E402
from vaelab.config import ParamsError, burda_stages, parse_params  # noqa: E402

TINY_MODEL = {"latent": 5, "hidden": [20]}


@pytest.fixture(scope="module")
def digits():
    x, _ = vdata.load_source("mnist5k")
    return x[:300], x[600:660]


def tiny(models=None, switched=None, **train_over):
    params = parse_params({
        "model": TINY_MODEL,
        "train": {"epochs": 2, "batch_size": 50, **train_over},
        "models": models or {"vae": {"objective": "elbo_analytic", "k": 1}},
        **({"switched": switched} if switched else {}),
    })
    return params.models


# ---------------------------------------------------------------------------------------
# 1. schedule

def test_burda_stages_passes_and_rates():
    stages = burda_stages(8)
    assert [p for p, _ in stages] == [1, 3, 9, 27, 81, 243, 729, 2187]
    assert sum(p for p, _ in stages) == 3280
    for i, (_, f) in enumerate(stages):
        assert f == pytest.approx(10 ** (-i / 7))
    t = tiny(schedule="burda", schedule_stages=8, epochs=None)["vae"].train
    assert t.epochs == 3280
    # epoch by epoch: 1 at 1e-3, 3 at 1e-3 * 10^(-1/7), 9 at 10^(-2/7), ...
    rates = [t.learning_rate_at(e) for e in range(1, 3281)]
    start = 0
    for i, (passes, _) in enumerate(stages):
        assert rates[start:start + passes] == pytest.approx([0.001 * 10 ** (-i / 7)] * passes)
        start += passes
    assert rates[-1] == pytest.approx(0.0001)  # stage 7: 0.001 * 10^(-7/7)
    with pytest.raises(ValueError):
        t.learning_rate_at(3281)
    const = tiny()["vae"].train
    assert {const.learning_rate_at(e) for e in (1, 50, 10_000)} == {0.001}


@pytest.mark.parametrize("over, expect", [
    ({"schedule": "burda", "schedule_stages": 3, "epochs": 14},
     "train.epochs: must be null (the whole schedule) or at most 13"),
    ({"schedule": "exponential"}, "train.schedule: must be one of constant, burda"),
    ({"schedule": "burda", "schedule_stages": 0}, "train.schedule_stages: must be a positive"),
    ({"epochs": None}, "train.epochs: must be a positive integer, got None"),
    ({"patience": 0}, "train.patience: must be a positive integer"),
    ({"restore_best": "yes"}, "train.restore_best: must be true or false"),
])
def test_schedule_and_stopping_params_mistakes(over, expect):
    with pytest.raises(ParamsError) as e:
        tiny(**over)
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_schedule_truncated_by_epochs():
    t = tiny(schedule="burda", schedule_stages=3, epochs=5)["vae"].train
    assert t.epochs == 5 and t.learning_rate_at(5) == pytest.approx(0.001 * 10 ** (-2 / 7))


def test_schedule_run_logs_its_rates_and_resumes_at_the_right_one(digits, tmp_path):
    """Stages 0 and 1: 1 + 3 = 4 epochs. Killed after epoch 2 (checkpointed), resumed: the
    same weights and rates as an uninterrupted run, and the rate did change the training."""
    x_train, x_valid = digits
    run = tiny(schedule="burda", schedule_stages=2, epochs=None, checkpoint_every=2)["vae"]
    assert run.train.epochs == 4
    ckpt = tmp_path / "vae.npz"

    assert killed_after(3, run, x_train, x_valid, ckpt)["epoch"] == 2
    resumed = vtrain.train(run, x_train, x_valid, checkpoint=ckpt, progress=quiet())
    straight = vtrain.train(run, x_train, x_valid, progress=quiet())
    assert resumed.resumed_from == 2
    lr1 = np.float32(0.001 * 10 ** (-1 / 7))
    assert [h["learning_rate"] for h in straight.history] == pytest.approx(
        [0.001, lr1, lr1, lr1])
    assert [h["learning_rate"] for h in resumed.history] == [h["learning_rate"]
                                                              for h in straight.history]
    assert all_equal(weights(resumed), weights(straight))
    constant = vtrain.train(tiny(epochs=4)["vae"], x_train, x_valid, progress=quiet())
    assert "learning_rate" not in constant.history[0]  # default runs: the same curve columns
    # epoch 1 runs at the same rate in both, epoch 2 at a lower one in the schedule
    assert constant.history[0]["valid_Lk"] == straight.history[0]["valid_Lk"]
    assert constant.history[1]["valid_Lk"] != straight.history[1]["valid_Lk"]


def test_schedule_reaches_the_jax_step():
    """On JAX the step keeps the optimizer's variables as its own arrays: the rate assigned
    each epoch must still reach it (same check as above: epoch 1 equal, epoch 2 not)."""
    code = textwrap.dedent("""
        import io
        from vaelab.quiet import use_backend
        use_backend("jax")
        from vaelab import data, train
        from vaelab.config import parse_params
        x, _ = data.load_source("mnist5k")
        def run(**over):
            p = parse_params({"model": {"latent": 5, "hidden": [20]},
                              "train": {"epochs": 2, "batch_size": 50, **over},
                              "models": {"vae": {"objective": "elbo_analytic"}}})
            return train.train(p.models["vae"], x[:300], x[600:660],
                               progress=train.Progress("vae", 1, io.StringIO())).history
        a, b = run(), run(schedule="burda", schedule_stages=2)
        print("LK", a[0]["valid_Lk"] == b[0]["valid_Lk"], a[1]["valid_Lk"] != b[1]["valid_Lk"])
    """)
    assert "LK True True" in run_py(code, "jax").stdout


# ---------------------------------------------------------------------------------------
# 2. early stopping and restore-best

SCRIPTED_LK = [-200.0, -150.0, -160.0, -170.0, -180.0, -190.0, -199.0, -210.0]  # best: epoch 2


@pytest.fixture
def scripted_lk(monkeypatch):
    """valid_Lk follows SCRIPTED_LK by epoch (a pure function of the epoch, so a resumed
    run sees the same values): early stopping is then decided by a known sequence."""
    real_epoch, real_bound = vtrain.train_epoch, vtrain.evaluate_bound
    at = {}

    def train_epoch(step, xs, order, batch_size, seed, first_step, *a):
        at["epoch"] = first_step // -(-len(order) // batch_size) + 1
        return real_epoch(step, xs, order, batch_size, seed, first_step, *a)

    def evaluate_bound(fn, x, seed, *a):
        out = real_bound(fn, x, seed, *a)
        if "Lk" in out:
            out["Lk"] = SCRIPTED_LK[at["epoch"] - 1]
        return out

    monkeypatch.setattr(vtrain, "train_epoch", train_epoch)
    monkeypatch.setattr(vtrain, "evaluate_bound", evaluate_bound)


def test_early_stopping_restores_the_best_weights_exactly(digits, scripted_lk, tmp_path):
    x_train, x_valid = digits
    run = tiny(epochs=8, patience=3, restore_best=True, checkpoint_every=3)["vae"]
    stopped = vtrain.train(run, x_train, x_valid, progress=quiet())
    assert stopped.epochs_trained == 5 and stopped.best_epoch == 2  # 3 epochs without gain
    assert stopped.stopped_early and stopped.restored_best
    assert stopped.kept["epoch"] == 2
    two = vtrain.train(tiny(epochs=2)["vae"], x_train, x_valid, progress=quiet())
    assert all_equal(weights(stopped), weights(two)), "not the best epoch's weights"

    # Killed at epoch 4, after the checkpoint of epoch 3 (whose best weights are epoch 2's):
    # the resumed run stops at the same epoch with the same weights.
    ckpt = tmp_path / "vae.npz"

    meta = killed_after(4, run, x_train, x_valid, ckpt)
    assert meta["epoch"] == 3 and meta["best"]["epoch"] == 2 and meta["best"]["wait"] == 1
    resumed = vtrain.train(run, x_train, x_valid, checkpoint=ckpt, progress=quiet())
    assert resumed.resumed_from == 3 and resumed.epochs_trained == 5
    assert resumed.best_epoch == 2 and resumed.stopped_early
    assert all_equal(weights(resumed), weights(two))
    # resumed once more from the checkpoint written at the stop: nothing more is trained
    again = vtrain.train(run, x_train, x_valid, checkpoint=ckpt, progress=quiet())
    assert again.epochs_trained == 5 and again.stopped_early
    assert all_equal(weights(again), weights(two))


def test_patience_without_restore_keeps_the_last_weights(digits, scripted_lk):
    x_train, x_valid = digits
    run = tiny(epochs=8, patience=2)["vae"]
    res = vtrain.train(run, x_train, x_valid, progress=quiet())
    assert res.epochs_trained == 4 and res.stopped_early and not res.restored_best
    four = vtrain.train(tiny(epochs=4)["vae"], x_train, x_valid, progress=quiet())
    assert all_equal(weights(res), weights(four))


def test_patience_counts_epochs_when_validating_sparsely(digits, scripted_lk, tmp_path):
    """valid_every=2 validates epochs 1, 2, 4, 6, 8. The best is epoch 2; patience 3 is in
    epochs, so epoch 4 (2 epochs on) goes on and epoch 6 (4 on) stops; restore_best puts
    epoch 2's weights back. Killed in epoch 5 after the checkpoint of epoch 3 (not
    validated), the resumed run decides the same."""
    x_train, x_valid = digits
    run = tiny(epochs=8, patience=3, restore_best=True, checkpoint_every=3, valid_every=2)["vae"]
    stopped = vtrain.train(run, x_train, x_valid, progress=quiet())
    assert stopped.epochs_trained == 6 and stopped.best_epoch == 2 and stopped.stopped_early
    assert stopped.kept["epoch"] == 2 and "valid_Lk" in stopped.kept
    two = vtrain.train(tiny(epochs=2)["vae"], x_train, x_valid, progress=quiet())
    assert all_equal(weights(stopped), weights(two))

    ckpt = tmp_path / "vae.npz"

    assert killed_after(5, run, x_train, x_valid, ckpt)["best"]["epoch"] == 2
    resumed = vtrain.train(run, x_train, x_valid, checkpoint=ckpt, progress=quiet())
    assert resumed.resumed_from == 3 and resumed.epochs_trained == 6
    assert resumed.best_epoch == 2 and resumed.stopped_early
    assert all_equal(weights(resumed), weights(two))


class _FullEval:
    k, n_test = 5000, 500


def test_early_stopped_run_is_not_indicative_for_stopping():
    full = {"train.epochs": 200, "epochs_trained": 200, "train.batch_size": 100}
    early = {"train.epochs": 200, "epochs_trained": 57, "stopped_early": True,
             "train.batch_size": 100}
    short = {"train.epochs": 50, "epochs_trained": 50, "train.batch_size": 100}
    assert report.budget_shortfalls({"a": full, "b": early}, _FullEval, 500, 4000) == []
    assert report.budget_shortfalls({"a": early, "c": short}, _FullEval, 500, 4000) == [
        "c 2,000 of 8,000 parameter updates (4,000 training digits)"]


def test_training_budget_counts_parameter_updates_not_passes():
    """The default run's 200 epochs of 4,000 digits in batches of 100 are 8,000 updates; full
    MNIST's 121 passes over 50,000 are 60,500 (not short), the default epochs in batches of
    1,000 are 800 (short), as are 200 epochs of a 400-digit set."""
    from vaelab.config import DEFAULT_TRAIN_DIGITS, DEFAULT_UPDATES

    assert (DEFAULT_TRAIN_DIGITS, DEFAULT_UPDATES) == (4000, 8000)
    run = {"train.epochs": 200, "epochs_trained": 200, "train.batch_size": 100}
    passes121 = {"train.epochs": 121, "epochs_trained": 121, "train.batch_size": 100}
    big_batch = {**run, "train.batch_size": 1000}
    assert report.budget_shortfalls({"a": run}, _FullEval, 500, 4000) == []
    assert report.budget_shortfalls({"a": passes121}, _FullEval, 10_000, 50_000) == []
    assert report.budget_shortfalls({"a": passes121}, _FullEval, 500, 4000) == [
        "a 4,840 of 8,000 parameter updates (4,000 training digits)"]
    assert report.budget_shortfalls({"b": big_batch}, _FullEval, 500, 4000) == [
        "b 800 of 8,000 parameter updates (4,000 training digits)"]
    assert report.budget_shortfalls({"a": run}, _FullEval, 500, 400) == [
        "a 800 of 8,000 parameter updates (400 training digits)"]
    # one update short is short; a last short batch counts as an update
    assert report.budget_shortfalls({"a": {**run, "epochs_trained": 199}}, _FullEval, 500,
                                    4000) != []
    assert report.budget_shortfalls({"a": run}, _FullEval, 500, 3901) == []


# ---------------------------------------------------------------------------------------
# 3. objective switching

SWITCH = {"vae": {"objective": "elbo_analytic"}}


def test_switched_model_starts_exactly_at_the_source_weights(digits, monkeypatch):
    x_train, x_valid = digits
    models = tiny(SWITCH, {"then_iwae": {"objective": "iwae", "k": 5, "init_from": "vae"}})
    source = vtrain.train(models["vae"], x_train, x_valid, progress=quiet())
    real_make_step, seen = vtrain.make_step, {}

    def make_step(model, *args):
        step = real_make_step(model, *args)

        def first(xs, seeds):
            seen.setdefault("w", model.encoder.get_weights() + model.decoder.get_weights())
            return step(xs, seeds)
        return first

    monkeypatch.setattr(vtrain, "make_step", make_step)
    init = (source.encoder.get_weights(), source.decoder.get_weights())
    switched = vtrain.train(models["then_iwae"], x_train, x_valid, progress=quiet(),
                            init_weights=init)
    assert all_equal(seen["w"], init[0] + init[1]), "did not start at the source's weights"
    assert not all_equal(weights(switched), init[0] + init[1])


@pytest.mark.parametrize("switched, expect", [
    ({"s": {"objective": "iwae", "k": 5}}, "switched.s.init_from: is required"),
    ({"s": {"objective": "iwae", "init_from": "nope"}}, "switched.s.init_from: names no model"),
    ({"s": {"objective": "iwae", "init_from": "s"}}, "must name another model, not the model"),
    ({"s": {"objective": "iwae", "init_from": "t"}, "t": {"objective": "iwae", "init_from": "s"}},
     "makes a cycle: s -> t -> s"),
    ({"s": {"objective": "iwae", "init_from": "vae", "latent": 3}},
     "vae has model.latent 5, s 3: the architectures must match"),
    ({"s": {"objective": "iwae", "init_from": "vae", "hidden": [30]}}, "model.hidden"),
    ({"vae": {"objective": "iwae", "init_from": "vae"}}, "switched.vae: is also a models: entry"),
])
def test_switched_params_mistakes(switched, expect):
    with pytest.raises(ParamsError) as e:
        tiny(SWITCH, switched)
    assert expect in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ParamsError, match="models.vae.init_from: unknown key"):
        tiny({"vae": {"objective": "elbo_analytic", "init_from": "x"}})


def test_switched_table_in_report():
    results = {"vae": {"nll": 100.0, "active_units": 12}, "s": {"nll": 98.5, "active_units": 15}}
    infos = {"vae": {"objective": "elbo_analytic"}, "s": {"objective": "iwae", "init_from": "vae"}}
    rows = report.switched_table(results, infos)
    assert "| s | iwae | vae | 100.00 | 98.50 | 12 | 15 |" in rows
    assert report.switched_table(results, {"vae": infos["vae"], "s": {"objective": "iwae"}}) == []


def test_dvc_sees_the_source_model_as_a_dependency(tmp_path):
    repo = make_repo(tmp_path, {"switched": {"then_iwae": {"objective": "iwae", "k": 50,
                                                           "init_from": "vae"}}})
    out = subprocess.run([sys.executable, "-m", "dvc", "dag", "--dot"], cwd=repo, env=env_for(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert '"train@vae" -> "train_switched@then_iwae"' in out.stdout
    # the switched model is measured and sampled by its own stages, then reported
    assert '"train_switched@then_iwae" -> "evaluate_switched@then_iwae"' in out.stdout
    assert '"train_switched@then_iwae" -> "sample_switched@then_iwae"' in out.stdout
    assert '"evaluate_switched@then_iwae" -> "report"' in out.stdout
