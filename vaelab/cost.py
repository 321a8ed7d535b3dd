"""What a setting will cost, known before anything runs: refused when it cannot fit or would
run for more than a year, warned when it takes hours. Read by the `check` stage (no
TensorFlow) and by the stages themselves.

Every count a user can set is bounded here through the cost it drives (memory, time),
and a refusal names the key that drives it, as the user wrote it (`models.iwae.k`, or
`train.valid_k` when no model overrides it). Counts that bound themselves are not listed:
evaluate.elbo_draws and evaluate.prior_k are clipped to evaluate.k, evaluate.snr_digits to
the test digits, data.valid_size / test_size to the source (prepare refuses more), and
train.schedule_stages is capped in vaelab.config (the schedule's length grows as 3^i).
The speeds are the README's (Speed) on 2 CPU cores for the default network: estimates to
the order of magnitude, which is what a bound needs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from . import cli
from .config import ParamsError, burda_epochs, clipped_prior_k

# Importance samples per second for the default network on 2 CPU cores (README, Speed:
# 73 test images/s at k=5000): forward passes (evaluation, validation, sampling).
SAMPLES_PER_S = 365_000
# Training (README, Speed: VAE 28,448 digits/s at k=1, IWAE k=50 3,107 digits/s): a fixed
# cost per digit plus one per importance sample, forward and backward.
TRAIN_DIGITS_PER_S = 28_000
TRAIN_SAMPLES_PER_S = 155_000
# The gradient SNR (vaelab.snr) maps a digit's repeats through the networks together, at
# most SNR_SAMPLES_PER_CALL samples (draws x k) per call: that bounds its memory. Its time
# per model: a trace per k and estimator, a fixed cost per call, and the samples' forward
# and backward passes (docs/speed.md, 2026-12-02, 2 cores: 17-18 s per model for 5 digits
# x 60 repeats x k in {1, 5, 50, 500} x 2 estimators, about 1 s of it per trace).
SNR_SAMPLES_PER_CALL = 30_000
SNR_TRACE_SECONDS = 1.2
SNR_CALL_SECONDS = 0.04
SNR_SAMPLES_PER_S = 60_000


def snr_blocks(repeats: int, k: int) -> tuple[int, int]:
    """How vaelab.snr splits a digit's `repeats` gradient draws at k into vectorized calls:
    (calls, draws per call). At most SNR_SAMPLES_PER_CALL samples (draws x k) a call, or one
    draw where k alone is more; equal blocks, so one trace serves them all (the last block
    is padded, then cut)."""
    calls = -(-repeats // max(1, min(repeats, SNR_SAMPLES_PER_CALL // k)))
    return calls, -(-repeats // calls)


WARN_SECONDS = 3600
MAX_SECONDS = 365 * 24 * 3600  # even a GPU 100x faster would take days: a mistake
PIXELS = 784
# digits of each source, for training's time; idx and npz are taken as MNIST-sized
SOURCE_DIGITS = {"mnist5k": 5_000, "mnist": 70_000, "fashion_mnist": 70_000}


def n_weights(cfg) -> int:
    """Weights and biases of both networks of a ModelConfig (memory, and the speed scale),
    for any number of stochastic layers (ModelConfig.stochastic: units and the hidden sizes
    below each, from x up)."""
    dense = lambda sizes: sum(a * b + b for a, b in zip(sizes, sizes[1:]))  # noqa: E731
    out = 2 * PIXELS  # a decoder's outputs (Gaussian: two heads; Bernoulli: one, bounded above)
    sizes, below, total = cfg.stochastic, PIXELS, 0
    for units, hidden in sizes:  # q(h1|x), q(h2|h1), ..
        total += dense([below, *hidden, 2 * units])
        below = units
    for (units, _), (above, hidden) in zip(sizes, sizes[1:]):  # p(h_i|h_{i+1})
        total += dense([above, *reversed(hidden), 2 * units])
    return total + dense([sizes[0][0], *reversed(cfg.hidden), out])


def _sample_floats(cfg) -> int:
    """Floats one importance sample holds through the decoder: z, every hidden layer, the
    outputs and their per-pixel log-probabilities."""
    return 2 * PIXELS + sum(units + sum(hidden) for units, hidden in cfg.stochastic) \
        + sum(units for units, _ in cfg.stochastic[:-1])


def _slowdown(cfg) -> float:
    """How much slower than the default network (the speeds above) one sample is."""
    from .config import ModelConfig
    return max(1.0, n_weights(cfg) / n_weights(ModelConfig()))


@dataclass(frozen=True)
class Cost:
    """What one setting costs: `key` drives it; `what` says how, for the message."""
    key: str
    what: str
    bytes: float = 0.0
    seconds: float = 0.0
    fix: str = ""
    stage: str = "train"


def _key(params, run, section: str, field: str) -> str:
    """The key as the user wrote it: the model's own entry when it overrides the shared one."""
    if getattr(getattr(run, section), field) != getattr(getattr(params, section), field):
        return f"{'switched' if run.init_from else 'models'}.{run.name}.{field}"
    return f"{section}.{field}"


def _samples(run) -> str:
    if run.samples == run.k:
        return f"{run.k:,}"
    return f"{run.samples:,} (k {run.k:,} x m {run.samples // run.k:,})"


def _driver(*keys: tuple[str, float, float]) -> str:
    """Of (key, value, usual value), the key furthest above its usual value: the one a
    refusal names when several multiply into one cost."""
    return max(keys, key=lambda k: k[1] / k[2])[0]


def _train_costs(params, run) -> list[Cost]:
    t, m, d = run.train, run.model, run.data
    digits = SOURCE_DIGITS.get(d.source, 70_000)
    n_train = max(1, digits - d.valid_size - d.test_size)
    n_valid = min(d.valid_size, digits)
    slow = _slowdown(m)
    s = run.samples
    section = "switched" if run.init_from else "models"
    k_key = f"{section}.{run.name}.k"
    if s != run.k:  # miwae, piwae: m groups of k samples
        k_key = _driver((k_key, run.k, 50), (f"{section}.{run.name}.m", run.samples // run.k, 5))
    epochs_key = _key(params, run, "train", "epochs")
    valid_k_key = _key(params, run, "train", "valid_k")
    if t.schedule == "burda" and t.epochs == burda_epochs(t.schedule_stages):
        epochs_key = _key(params, run, "train", "schedule_stages")
        epochs = (f"{epochs_key}: {t.schedule_stages} with {_key(params, run, 'train', 'epochs')}"
                  f" null ({t.epochs:,} epochs, the whole burda schedule)")
        more = " or set train.epochs"
    else:
        epochs, more = f"{epochs_key}: {t.epochs:,} epochs", ""
    batch = min(t.batch_size, n_train)
    floats = _sample_floats(m)
    sizes = [("hidden", max(m.hidden), 200), ("latent", m.latent, 50)]
    if m.layers >= 2:
        sizes += [("h1_latent", m.h1_latent, 100), ("h1_hidden", max(m.h1_hidden), 100)]
    layer_key = _driver(*((_key(params, run, "model", f), v, u) for f, v, u in sizes))
    steps_key = _driver((epochs_key, t.epochs, 200), (k_key, s, 50))
    valid_key = _driver((epochs_key, t.epochs, 200), (valid_k_key, t.valid_k, 50))
    where = f"model '{run.name}'"
    samples = f"{k_key}: {_samples(run)} sample(s)"
    batch_key = _key(params, run, "train", "batch_size")
    memory_key = _driver((k_key, s, 50), (batch_key, batch, 100))
    return [
        Cost(steps_key, (f"{epochs} x {_samples(run)} sample(s)" if steps_key == epochs_key
                         else f"{samples} x {t.epochs:,} epochs") + f" x {n_train:,} digits "
             f"({where})",
             seconds=slow * t.epochs * n_train * (1 / TRAIN_DIGITS_PER_S + s / TRAIN_SAMPLES_PER_S),
             fix=f"lower {steps_key}" + (more if steps_key == epochs_key else "")),
        Cost(valid_key, (f"{epochs} ({t.validations():,} validated) x {t.valid_k:,} validation "
                         "samples" if valid_key == epochs_key
                         else f"{valid_k_key}: {t.valid_k:,} samples x {t.validations():,} "
                         "validated epochs")
             + f" x {n_valid:,} validation digits ({where})",
             seconds=slow * t.validations() * n_valid * (s + t.valid_k) / SAMPLES_PER_S,
             fix=f"lower {valid_key}" + (more if valid_key == epochs_key else "")),
        # weights, gradients and two Adam slots: 4 float32 copies
        Cost(layer_key, f"{layer_key} (model.hidden {list(m.hidden)}, model.latent {m.latent}, "
             f"{where}): {n_weights(m):,} weights, gradients and Adam's two slots",
             bytes=16 * n_weights(m), fix="use smaller layers"),
        # activations kept for the backward pass: about three times the forward's
        Cost(memory_key, (f"{samples} x {batch_key} {t.batch_size:,}" if memory_key == k_key
                          else f"{batch_key}: {t.batch_size:,} x {_samples(run)} sample(s)")
             + f" digits per step ({where})", bytes=3 * 4 * batch * s * floats,
             fix=f"lower {k_key} or {batch_key}"),
        # the validation bound: 500 digits at a time, all valid_k samples at once
        Cost(valid_k_key, f"{valid_k_key}: {t.valid_k:,} samples x {min(500, n_valid)} "
             f"validation digits per pass ({where})",
             bytes=4 * min(500, n_valid) * t.valid_k * floats,
             fix=f"lower {valid_k_key} (50 is the README's)"),
    ]


def costs(params) -> list[Cost]:
    """Every bounded setting's cost: training per model, evaluate's, sample's."""
    out = [c for run in params.models.values() for c in _train_costs(params, run)]
    e, n = params.evaluate, len(params.models)
    # evaluate uses at most the prepared test digits (and chunks, batches, draws, prior_k
    # within them and evaluate.k), so those counts bound themselves
    e = dataclasses.replace(e, n_test=min(e.n_test, params.data.test_size))
    floats = max(_sample_floats(r.model) for r in params.models.values())
    slow = max(_slowdown(r.model) for r in params.models.values())
    samples = e.n_test * (e.k + max(clipped_prior_k(e)))
    out.append(Cost("evaluate.k", f"evaluate.k: {e.k:,} importance samples x {e.n_test} test "
                    "digits hold log-weights", bytes=4 * samples,
                    seconds=slow * n * samples / SAMPLES_PER_S,
                    fix="lower evaluate.k or evaluate.n_test", stage="evaluate"))
    chunk = min(e.chunk, e.k)
    out.append(Cost("evaluate.chunk", f"evaluate.chunk: {chunk:,} samples x "
                    f"evaluate.batch_size {e.batch_size:,} digits per pass",
                    bytes=4 * chunk * min(e.batch_size, e.n_test) * floats,
                    fix="lower evaluate.chunk or evaluate.batch_size", stage="evaluate"))
    grads = max(n_weights(r.model) for r in params.models.values())
    digits = min(e.snr_digits, e.n_test)
    blocks = {k: snr_blocks(e.snr_repeats, k) for k in e.snr_k}
    calls = sum(c for c, _ in blocks.values())  # per digit and estimator
    est = len(e.snr_estimators)
    snr_key = _driver(("evaluate.snr_repeats", e.snr_repeats, 60),
                      ("evaluate.snr_k", max(e.snr_k), 500))
    out.append(Cost(snr_key, f"{snr_key}: gradient SNR of {digits} digit(s) x "
                    f"{e.snr_repeats:,} repeats at k {list(e.snr_k)}",
                    seconds=slow * n * est * (len(e.snr_k) * SNR_TRACE_SECONDS
                                              + digits * calls * SNR_CALL_SECONDS
                                              + digits * e.snr_repeats * sum(e.snr_k)
                                              / SNR_SAMPLES_PER_S),
                    fix=f"lower {snr_key}", stage="evaluate"))
    held = max(k * n for k, (_, n) in blocks.items())
    out.append(Cost("evaluate.snr_k", f"evaluate.snr_k: {held:,} samples per gradient "
                    "call (repeats x k)", bytes=3 * 4 * held * floats,
                    fix="lower evaluate.snr_k", stage="evaluate"))
    out.append(Cost("evaluate.snr_repeats", f"evaluate.snr_repeats: {e.snr_repeats:,} "
                    f"gradients of {grads:,} weights kept per digit and k",
                    bytes=4 * e.snr_repeats * grads,
                    fix="lower evaluate.snr_repeats (60 is the README's)", stage="evaluate"))
    s = params.sample.n
    out.append(Cost("sample.n", f"sample.n: {s:,} digits decoded at once and drawn in one "
                    "grid", bytes=4 * s * floats + 8 * s * PIXELS,
                    seconds=slow * n * s / SAMPLES_PER_S,
                    fix="lower sample.n (100 is the README's)", stage="sample"))
    return out


def evaluate_cost(params) -> tuple[int, float]:
    """(bytes, seconds) of the evaluate stage's log-weights: [k, n_test] float32 for
    posterior sampling plus [max prior_k, n_test] for prior sampling, for every model."""
    [c] = [c for c in costs(params) if c.key == "evaluate.k"]
    return int(c.bytes), c.seconds


def _duration(seconds: float) -> str:
    return f"{seconds / 60:,.0f} min" if seconds < 2 * 3600 else _span(seconds)


def estimate(params) -> str:
    """One line of the expected time per stage kind, before anything runs: the full-MNIST
    benchmark's L_5000 on 10,000 digits takes minutes per model, its training hours."""
    by = {}
    for c in costs(params):
        by[c.stage] = by.get(c.stage, 0.0) + c.seconds
    e = params.evaluate
    n_test = min(e.n_test, params.data.test_size)
    return (f"expected on 2 CPU cores (README, Speed; a slower CPU takes up to 2x): training "
            f"{_duration(by.get('train', 0))} for {len(params.models)} models, evaluation "
            f"{_duration(by.get('evaluate', 0))} (L_{e.k:,} on {n_test:,} test digits per "
            f"model), sampling {_duration(by.get('sample', 0))}")


def _span(seconds: float) -> str:
    if seconds >= 2 * 365 * 24 * 3600:
        return f"{seconds / (365 * 24 * 3600):,.3g} years"
    if seconds >= 2 * 24 * 3600:
        return f"{seconds / (24 * 3600):,.0f} days"
    return f"{seconds / 3600:,.1f} hours"


def check_cost(params, warn_as: str | None = None) -> None:
    """Refuse a setting whose memory is over half of what is available, or whose time is
    over MAX_SECONDS on 2 CPU cores: all of them in `check`, before any training; with
    `warn_as` (a stage's name), that stage's own only, and a warning when they take hours."""
    have = cli.available_bytes()
    mine = [c for c in costs(params) if not warn_as or c.stage == warn_as]
    for c in mine:  # memory first: a setting too big to fit makes every estimate slow too
        if have is not None and c.bytes > have / 2:
            raise ParamsError(
                f"{params.path}: {c.what}: about {c.bytes / 2**30:,.1f} GiB, more than half the "
                f"{have / 2**30:.1f} GiB available; {c.fix}")
    for c in mine:
        if c.seconds > MAX_SECONDS:
            raise ParamsError(
                f"{params.path}: {c.what}: about {_span(c.seconds)} on 2 CPU cores (README, "
                f"Speed), over the year this check allows; {c.fix}")
    if warn_as == "evaluate":
        e = params.evaluate
        seconds = evaluate_cost(params)[1]
        if seconds > WARN_SECONDS:
            print(f"{warn_as}: warning: evaluate.k={e.k:,} on {e.n_test} digits x "
                  f"{len(params.models)} models takes about {seconds / 3600:,.1f} hours on "
                  "2 CPU cores (default: about 1 minute per model)", flush=True)
