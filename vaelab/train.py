"""Training: one compiled step, an epoch loop, checkpoints that make a killed run resumable.

Randomness is stateless: the step's seed is (train.seed, global step), and the epoch's
shuffle is seeded by (train.seed, epoch), as is the dequantization noise of grey values
(with data.seed). A run is therefore a pure function of its config,
which is what makes it deterministic on the CPU and lets a resumed run end with the very
same weights as one that was never interrupted, on either Keras backend: only the compiled
step differs (TF: tf.function + GradientTape; JAX: jax.jit + jax.value_and_grad + the
optimizer's stateless_apply); the loss it differentiates is one function (`step_loss`).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import keras
import numpy as np
from keras import ops

from . import backend
from . import data as vdata
from . import models
from .config import RunConfig, UserError
from .io import exclusive_lock, file_sha256
from . import objectives
from .objectives import iwae


class NonFiniteError(UserError, RuntimeError):
    """The loss or a gradient became NaN/inf; the message says where and what to try."""


class DivergedError(UserError, RuntimeError):
    """The validation bound exploded without becoming NaN (see `diverged_below`)."""


def diverged_below(run: RunConfig) -> float | None:
    """The validation bound under which a run counts as diverged, or None (no rule).

    Bernoulli decoder: twice what a decoder answering 0.5 for every pixel scores,
    2 * 784 log 2 = 1087 nats below zero. A healthy run starts near that coin-flip decoder
    (-550: small logits, small KL) and only improves; tiny test runs score -526..-537 after
    one epoch of 6-12 steps, while learning rate 1.0 reaches -5,871 and 1000 reaches -3.4e7.
    Gaussian decoders are exempt: their density has no such floor (a fixed small
    decoder_scale legitimately scores -1e6 at the start); the NaN guard still applies."""
    if run.model.decoder != "bernoulli":
        return None
    return -2 * vdata.PIXELS * float(np.log(2.0))


@dataclass
class TrainResult:
    encoder: keras.Model
    decoder: keras.Model
    history: list[dict] = field(default_factory=list)  # one dict per epoch
    seconds: float = 0.0  # training time of this process (resumed epochs excluded)
    samples_per_s: float = 0.0
    resumed_from: int = 0  # epochs restored from a checkpoint
    valid_seconds: float = 0.0  # per-epoch validation of this process (not in `seconds`)
    best_epoch: int | None = None  # the best validation L_k's epoch (patience/restore_best)
    stopped_early: bool = False  # patience ran out before train.epochs
    restored_best: bool = False  # the networks hold best_epoch's weights, not the last's
    vae: models.VAE | None = None  # the trained networks as one model object

    @property
    def epochs_trained(self) -> int:
        return self.history[-1]["epoch"] if self.history else 0

    @property
    def kept(self) -> dict:
        """The history entry of the epoch whose weights the networks hold."""
        return self.history[self.best_epoch - 1] if self.restored_best else self.history[-1]


def train_inputs(x: np.ndarray, binarize: str, seed, epoch: int = 1) -> np.ndarray:
    """What the step is fed in `epoch`, float32 [N, 784]: pixel probabilities for `dynamic`
    (the step draws a fresh binarization), a fixed binarization for static/threshold, and
    for none (Gaussian decoder) grey values dequantized, (pixel + u) / 256 with u drawn
    afresh every epoch from the stateless seed (seed, epoch) (`vdata.dequantize`): every
    batch sees noise no earlier batch saw, and a resumed run the same noise as an unbroken
    one. `seed` is an int, or for none a sequence of ints."""
    if binarize == "none":
        return vdata.dequantize(x, [*np.atleast_1d(seed).tolist(), epoch])
    if binarize == "dynamic":
        return vdata.to_unit(x)
    return vdata.binarize(x, binarize, seed).astype(np.float32)


def eval_inputs(x: np.ndarray, binarize: str, seed: int) -> np.ndarray:
    """A fixed evaluation set, float32 [N, 784]: one seeded draw, so numbers are comparable
    epoch to epoch and model to model (for none: one fixed dequantization)."""
    if binarize == "none":
        return vdata.dequantize(x, seed)
    mode = "threshold" if binarize == "threshold" else "static"
    return vdata.binarize(x, mode, seed).astype(np.float32)


def trained_groups(vae: models.VAE, run: RunConfig) -> list[tuple[str, list]]:
    """(name, trainable variables) of each group the run's objective trains, which may give
    a group its own surrogate (Bound.surrogates). An objective that never calls the encoder
    (eq. 7) gives it no gradient, and Adam must not be handed None gradients for it."""
    return [(g, vs) for g, vs in vae.groups if g != "encoder" or run.spec.uses_encoder]


def trained_variables(vae: models.VAE, run: RunConfig) -> list:
    return [v for _, vs in trained_groups(vae, run) for v in vs]


def bound(vae: models.VAE, run: RunConfig, x, seed, k=None) -> objectives.Bound:
    """The run's own objective on x: a Bound (bound [B], terms, surrogates)."""
    objective = objectives.objective(run.objective, **run.options())
    return objective(x, vae.posterior(x), vae.prior(), vae.decode, k or run.k, seed)


def make_optimizer(vae: models.VAE, run: RunConfig,
                   learning_rate: float) -> keras.optimizers.Optimizer:
    """Adam with epsilon 1e-4 as Burda et al., its slots built for the trained variables
    (so a checkpoint can be restored into it before the first step)."""
    optimizer = keras.optimizers.Adam(learning_rate, epsilon=1e-4)
    optimizer.build(trained_variables(vae, run))
    return optimizer


def step_loss(vae: models.VAE, run: RunConfig, x, seed, dynamic: bool):
    """The loss one training step reports and differentiates, on either backend:
    (loss, surrogate losses, logs). The surrogates are None when every variable follows
    -mean(bound), else {group: scalar} (objectives.surrogate_losses): what each group of
    `trained_groups` differentiates instead. x [B, 784], seed a stateless seed [2]."""
    bin_seed, z_seed = backend.split_seed(seed)
    if dynamic:
        # A fresh Bernoulli draw of every pixel each time the digit is seen
        # (Burda et al. 2015): less overfitting than one fixed binarization.
        x = ops.cast(backend.uniform(ops.shape(x), bin_seed) < x, "float32")
    b = bound(vae, run, x, z_seed)
    logs = {"bound": ops.mean(b.bound)}
    logs.update({n: ops.mean(t) for n, t in b.terms.items()})
    groups = [g for g, _ in trained_groups(vae, run)]
    return -ops.mean(b.bound), objectives.surrogate_losses(b, groups), logs


def _all_finite(loss, grads):
    finite = ops.all(ops.isfinite(loss))
    for g in grads:
        finite = ops.logical_and(finite, ops.all(ops.isfinite(g)))
    return finite


def make_step(vae: models.VAE, run: RunConfig, optimizer: keras.optimizers.Optimizer,
              dynamic: bool, jit: bool | str):
    """Adam steps on n batches x [n, B, 784] with stateless seeds [n, 2], one after another
    inside one compiled call (n is x's leading dimension, unrolled; Keras calls it
    steps_per_execution). Returns (logs {name: [n]}, finite [n]); the Keras variables of
    the model and the optimizer hold the new state after each call on TF, and after
    `vae.write_back()` on JAX (a no-op on TF: call it before reading them).

    Measured on 2 CPU cores (`python -m vaelab.bench --levers`): one step per call is
    6-12% slower for IWAE k=50 and 31-36% slower for the VAE than 4, with bit-identical
    weights (tests); 8 gain nothing more. A whole epoch as one graph loop was 8x slower."""
    if backend.NAME == "jax":
        return _make_step_jax(vae, run, optimizer, dynamic)
    import tensorflow as tf

    variables, grad_fn = trained_variables(vae, run), _grad_fn(vae, run, dynamic)

    def one_step(x, seed):
        grads, loss, logs = grad_fn(x, seed)
        finite = _all_finite(loss, grads)
        # Never let a NaN into the weights: the caller stops at the first step with
        # `finite == False`, and the checkpoint on disk stays the last good state.
        grads = [tf.where(finite, g, tf.zeros_like(g)) for g in grads]
        optimizer.apply(grads, variables)
        return logs, finite

    def steps(xs, seeds):
        outs = [one_step(xs[j], seeds[j]) for j in range(xs.shape[0])]
        logs = {name: tf.stack([lg[name] for lg, _ in outs]) for name in outs[0][0]}
        return logs, tf.stack([finite for _, finite in outs])

    # no reduce_retracing: the unrolled loop needs n as a static shape (an epoch has at
    # most three: full calls, the leftover full batches, a short last batch)
    return backend.tf_function(steps, jit)


def _grad_fn(vae: models.VAE, run: RunConfig, dynamic: bool):
    """(x, seed, values=None) -> (gradients of trained_variables, loss, logs): one forward
    pass, one backward pass per target, so each group keeps the gradient of its own target
    (backend.grads_by_group; `values`: JAX's weights, as the jitted step carries them)."""
    groups = trained_groups(vae, run)
    by_group = backend.grads_by_group(lambda x, seed: step_loss(vae, run, x, seed, dynamic),
                                      groups)

    def grad_fn(x, seed, values=None):
        grads, loss, logs = by_group(x, seed, values=values)
        return [g for name, _ in groups for g in grads[name]], loss, logs

    return grad_fn


def _make_step_jax(vae: models.VAE, run: RunConfig, optimizer: keras.optimizers.Optimizer,
                   dynamic: bool):
    """make_step on JAX: a pure function of (weights, optimizer slots, batches, seeds),
    jitted. The state is read from the Keras variables at the first call after a write-back
    and then stays JAX arrays from call to call; `vae.write_back()` assigns it to the
    variables (the training loop calls it before validation, checkpoints and the end), so
    they hold the same state as on TensorFlow whenever they are read. Writing back after
    every call cost 0.15-0.3 ms per call on 2 CPU cores: next to a GPU call of 4 steps
    (~5 ms), a few %."""
    import jax
    import jax.numpy as jnp

    variables, slots = trained_variables(vae, run), optimizer.variables
    grad_fn = _grad_fn(vae, run, dynamic)

    def steps(values, slot_values, xs, seeds):
        all_logs, finites = [], []
        for j in range(xs.shape[0]):  # unrolled, as on TF
            grads, loss, logs = grad_fn(xs[j], seeds[j], values=values)
            finite = _all_finite(loss, grads)
            # NaN guard, as on TF: a non-finite step applies zero gradients
            grads = [jnp.where(finite, g, jnp.zeros_like(g)) for g in grads]
            values, slot_values = optimizer.stateless_apply(slot_values, grads, values)
            all_logs.append(logs)
            finites.append(finite)
        logs = {name: jnp.stack([lg[name] for lg in all_logs]) for name in all_logs[0]}
        return values, slot_values, logs, jnp.stack(finites)

    compiled = jax.jit(steps)
    state = []  # [(values, slot_values)] while the variables are behind
    place = DataParallel(run.train.devices) if run.train.devices > 1 else None

    def call(xs, seeds):
        if not state:
            state.append(([v.value for v in variables], [v.value for v in slots]))
            if place is not None:
                state[0] = place.replicated(state[0])
        if place is not None:
            xs = place.batches(xs)
        values, slot_values, logs, finite = compiled(*state[0], xs, seeds)
        state[0] = (values, slot_values)
        return logs, finite

    def write_back():
        if state:
            values, slot_values = state.pop()
            for v, value in zip(variables, values):
                v.assign(value)
            for v, value in zip(slots, slot_values):
                v.assign(value)

    vae.write_back = write_back
    return call


class DataParallel:
    """Keras' keras.distribution.DataParallel over the first `n` devices, for the JAX step:
    the weights and optimizer state replicated, each call's batches [n_steps, B, 784] split
    on the batch axis. jax.jit then partitions the step (GSPMD) and sums the gradient over
    devices; the noise is drawn from the same seeds as on one device (JAX's partitionable
    threefry, the default), so only the order of float sums differs."""

    def __init__(self, n: int):
        seen = keras.distribution.list_devices()
        if len(seen) < n:
            raise UserError(
                f"train.devices: {n}, but JAX sees {len(seen)} device(s) ({', '.join(seen)}): "
                f"set train.devices to at most {len(seen)}, or on a CPU start with "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={n}")
        self.n = n
        self.dist = keras.distribution.DataParallel(devices=seen[:n])

    def _put(self, x, axes):
        layout = keras.distribution.TensorLayout(axes, self.dist.device_mesh)
        return keras.distribution.distribute_tensor(x, layout)

    def replicated(self, tree):
        import jax

        return jax.tree_util.tree_map(lambda x: self._put(x, [None] * x.ndim), tree)

    def batches(self, xs):
        """xs [n_steps, B, 784], split on B; a batch that does not divide evenly (the last,
        short one of an epoch) is replicated: each device computes all of it, same result."""
        axes = [None, self.dist.batch_dim_name, None] if xs.shape[1] % self.n == 0 else [None] * 3
        return self._put(xs, axes)


def make_eval(vae: models.VAE, run: RunConfig, jit: bool | str):
    def evaluate(x, seed):
        b = bound(vae, run, x, seed)
        return {"bound": ops.sum(b.bound), **{n: ops.sum(t) for n, t in b.terms.items()}}

    return backend.compile(evaluate, vae.variables, jit)


def make_valid_bounds(vae: models.VAE, k: int, jit: bool | str):
    """The ELBO (L_1) and L_k at a fixed k of every model, whatever its own objective, from
    the same k posterior samples per digit: the curves every model shares. The IWAE bound's
    terms give the ELBO, mean log w = -(distortion + rate)."""
    def bounds(x, seed):
        b = iwae(x, vae.posterior(x), vae.prior(), vae.decode, k, seed)  # bound, terms: [B] each
        return {"elbo": -ops.sum(b.terms["distortion"] + b.terms["rate"]),
                "Lk": ops.sum(b.bound)}

    return backend.compile(bounds, vae.variables, jit)


def evaluate_bound(eval_fn, x: np.ndarray, seed: int, batch_size: int = 500) -> dict:
    """Mean of the run's objective and its terms over x, with fixed seeds."""
    sums: dict[str, float] = {}
    for i, start in enumerate(range(0, len(x), batch_size)):
        out = eval_fn(ops.convert_to_tensor(x[start:start + batch_size]), backend.seed(seed, i))
        for n, v in out.items():
            sums[n] = sums.get(n, 0.0) + float(v)
    return {n: v / len(x) for n, v in sums.items()}


def posterior_width(model, x: np.ndarray) -> dict:
    """Active units and the median std of q(z|x) on them: logged every epoch, so the
    curves show how the posterior narrows with training (the article's claim). `model`: a
    models.VAE, or a one-layer encoder. Two layers: also per layer (`_h1`, `_h2`; q(h2|h1)
    at h1 = E_q[h1|x], models.VAE.posterior_params), the totals over both."""
    layers = (model.posterior_params(x) if isinstance(model, models.VAE)
              else [models.posterior_params(model, x)])  # [(loc, scale) [N, d]] per layer
    out, widths = {}, []
    for i, (loc, scale) in enumerate(layers, 1):
        active = models.active_mask(loc)
        widths.append(scale[:, active].ravel())
        if len(layers) > 1:
            out[f"active_units_h{i}"] = int(active.sum())
            out[f"posterior_std_h{i}"] = float(np.median(widths[-1])) if active.any() \
                else float("nan")
    width = np.concatenate(widths)
    return {"active_units": sum(int(models.active_mask(loc).sum()) for loc, _ in layers),
            "posterior_std": float(np.median(width)) if width.size else float("nan"), **out}


# ---------------------------------------------------------------------------------------
# checkpoints: plain npz of every weight and optimizer slot, written atomically

def checkpoint_key(run: RunConfig) -> str:
    """Identifies the resolved config: the file name of its checkpoint. What else decides
    the weights (code, data) is checked against the checkpoint's `fingerprint` on load."""
    blob = json.dumps(run.as_flat_dict(), sort_keys=True, default=str).encode()
    return f"{run.name}-{hashlib.sha256(blob).hexdigest()[:12]}"


def fingerprint(code: dict[str, Path], data_dir: Path) -> dict:
    """Everything besides the params that decides the weights: the content hash of each
    code file ({shown name: path}) and of each prepared data file."""
    data_dir = Path(data_dir)
    return {"code": {name: file_sha256(p) for name, p in sorted(code.items())},
            "data": {p.name: file_sha256(p) for p in sorted(data_dir.iterdir()) if p.is_file()}}


def _changed(old: dict, new: dict) -> list[str]:
    names = []
    for part in ("code", "data"):
        a, b = old.get(part, {}), new.get(part, {})
        names += [f"{part} {n}" for n in sorted(set(a) | set(b)) if a.get(n) != b.get(n)]
    return names


@dataclass
class Checkpoint:
    """A checkpoint read into memory: what training resumes from is exactly what was
    checked (and announced), even if the file changes afterwards."""
    meta: dict
    arrays: dict[str, np.ndarray]


def read_checkpoint(path: Path) -> Checkpoint:
    """Every member read once (a damaged one fails its CRC here), meta parsed."""
    with np.load(path) as z:
        arrays = {name: z[name] for name in z.files}
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    meta["epoch"], meta["history"]  # KeyError: not a checkpoint that can resume
    return Checkpoint(meta, arrays)


def open_checkpoint(path: Path, expected: dict,
                    say: Callable[[str], None] = print) -> Checkpoint | None:
    """The checkpoint at `path`, in memory, if it can resume a run whose fingerprint is
    `expected`; else None. A checkpoint of other code or data is deleted, an unreadable one
    (truncated, damaged) is renamed to `*.bad`; either with a one-line notice."""
    if not path.exists():
        return None
    try:
        ckpt = read_checkpoint(path)
    except Exception as e:  # noqa: BLE001 - whatever is wrong, it cannot be resumed
        bad = path.with_name(path.name + ".bad")
        os.replace(path, bad)
        say(f"checkpoint {path} is unreadable ({type(e).__name__}): set aside as {bad.name}; "
            "training starts from epoch 1")
        return None
    changed = _changed(ckpt.meta.get("fingerprint", {}), expected)
    if changed:
        path.unlink()
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        say(f"checkpoint {path.name} was made with other code or data ({shown} changed): "
            "discarded; training starts from epoch 1")
        return None
    return ckpt


@contextmanager
def own_checkpoint(folder: Path, key: str, slots: int = 100):
    """The checkpoint path of config `key` that this process alone uses while the block
    runs: the first of `<key>.npz`, `<key>-2.npz`, ... whose lock file no live process
    holds. Two trainings of one config at once (parallel `dvc exp run --temp` or queued
    experiments differing only in evaluate keys) never resume or overwrite each other's
    live checkpoint, while a killed run's checkpoint, its lock gone with its process, is
    resumed by the next training of that config."""
    for i in range(1, slots + 1):
        stem = key if i == 1 else f"{key}-{i}"
        lock = exclusive_lock(folder / f"{stem}.lock")
        if lock is None:
            continue
        with lock:
            yield folder / f"{stem}.npz"
        return
    raise UserError(f"{folder}: {slots} trainings of the config {key} run at once; wait for "
                    "some to finish")


def save_checkpoint(path: Path, model: models.VAE, optimizer, epoch: int, history: list,
                    extra: dict, best: "Best | None" = None) -> None:
    arrays = {f"enc_{i}": w for i, w in enumerate(model.encoder.get_weights())}
    arrays.update({f"dec_{i}": w for i, w in enumerate(model.decoder.get_weights())})
    arrays.update({f"opt_{i}": np.asarray(v) for i, v in enumerate(optimizer.variables)})
    meta = {"epoch": epoch, "history": history, **extra}
    if best is not None:  # early stopping's state: a resumed run ends as an uninterrupted one
        arrays.update({f"best_{i}": w for i, w in enumerate(best.weights or [])})
        meta["best"] = best.meta()
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        # A full disk fails the write: the previous checkpoint stays, no half file is left.
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def checkpoint_meta(path: Path) -> dict | None:
    """The epoch, history and extras of a checkpoint, or None if there is none."""
    if not path.exists():
        return None
    with np.load(path) as z:
        return json.loads(z["meta"].tobytes().decode())


def restore_checkpoint(ckpt: Checkpoint, model: models.VAE, optimizer,
                       best: "Best | None" = None) -> None:
    z, meta = ckpt.arrays, ckpt.meta
    if best is not None and "best" in meta:
        best.restore(meta["best"], [z[f"best_{i}"] for i in range(meta["best"]["n_weights"])])
    n_enc = len(model.encoder.get_weights())
    n_dec = len(model.decoder.get_weights())
    model.encoder.set_weights([z[f"enc_{i}"] for i in range(n_enc)])
    model.decoder.set_weights([z[f"dec_{i}"] for i in range(n_dec)])
    for i, v in enumerate(optimizer.variables):
        v.assign(z[f"opt_{i}"])


class Best:
    """Early stopping and restore-best on the validation L_<train.valid_k> (`valid_Lk`): the
    best value, its epoch, its weights (kept in memory when restore_best), and the epochs
    since it improved. Only validated epochs (`TrainConfig.validates`) are candidates and can
    stop the run; patience counts epochs, not validations. Saved in every checkpoint, so a
    resumed run decides as one that was never interrupted."""

    MONITOR = "valid_Lk"

    def __init__(self, patience: int | None, keep_weights: bool):
        self.patience, self.keep_weights = patience, keep_weights
        self.value, self.epoch, self.wait = -np.inf, 0, 0
        self.weights: list[np.ndarray] | None = None
        self.stopped = False

    def update(self, epoch: int, logs: dict, model: models.VAE) -> bool:
        """After an epoch; True when training should stop. An epoch without validation
        (no `valid_Lk` in its logs) changes nothing."""
        if self.MONITOR not in logs:
            return False
        value = logs[self.MONITOR]
        if value > self.value:  # a NaN never improves
            self.value, self.epoch = float(value), epoch
            if self.keep_weights:
                self.weights = model.encoder.get_weights() + model.decoder.get_weights()
        # in epochs: validating every epoch, the count of epochs without improvement
        self.wait = epoch - self.epoch
        self.stopped = self.patience is not None and self.wait >= self.patience
        return self.stopped

    def meta(self) -> dict:
        return {"value": self.value, "epoch": self.epoch, "wait": self.wait,
                "stopped": self.stopped, "n_weights": len(self.weights or [])}

    def restore(self, meta: dict, weights: list[np.ndarray]) -> None:
        self.value, self.epoch, self.wait = meta["value"], meta["epoch"], meta["wait"]
        self.stopped = meta["stopped"]
        self.weights = weights or None

    def put_back(self, model: models.VAE) -> None:
        n = len(model.encoder.get_weights())
        model.encoder.set_weights(self.weights[:n])
        model.decoder.set_weights(self.weights[n:])


# ---------------------------------------------------------------------------------------

class Progress:
    """A line per epoch; on a terminal, one line redrawn in place with a bar, kept every
    tenth of the run, so a long run does not scroll away."""

    def __init__(self, name: str, epochs: int, stream=None):
        self.name, self.epochs = name, epochs
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()

    def epoch(self, logs: dict) -> None:
        e = logs["epoch"]
        valid = f"valid bound {logs['valid_bound']:.2f}  " if "valid_bound" in logs else ""
        line = (f"{self.name} epoch {e}/{self.epochs}  train bound {logs['train_bound']:.2f}  "
                f"{valid}{logs['seconds']:.1f}s")
        if self.tty:
            bar = "#" * round(20 * e / self.epochs)
            keep = e == self.epochs or e % max(1, self.epochs // 10) == 0
            self.stream.write(f"\r[{bar:<20}] {line}" + ("\n" if keep else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def train_epoch(step, xs, order: np.ndarray, batch_size: int, seed: int,
                first_step: int, steps_per_execution: int = 1) -> tuple[dict, int | None]:
    """One pass over xs [N, 784] in `order`, up to `steps_per_execution` batches per call
    of `step` (make_step); the seed of the epoch's i-th step is (seed, first_step + i).
    Returns the logged terms summed over examples, and the index of the first step whose
    loss or gradient was non-finite (None when every step was finite). `python -m
    vaelab.bench` times this.

    Every call is issued before any result is read back: on an accelerator (JAX dispatches
    asynchronously) the host prepares the next batches while the device computes, instead
    of waiting for each call's logs. A non-finite step is found once the epoch's calls
    have run: the steps after it are wasted, the outcome is the same (its gradients were
    not applied, and training stops with NonFiniteError)."""
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    calls = []  # (first batch index, batches, logs, finite) per call, read back below
    i = 0
    while i < len(batches):
        j = i + 1  # batches i..j-1 go in one call: same size, so a short last one goes alone
        while j < len(batches) and j - i < steps_per_execution and len(batches[j]) == len(batches[i]):
            j += 1
        seeds = backend.seeds([[seed, first_step + s] for s in range(i, j)])  # [n, 2]
        logs, finite = step(backend.gather(xs, np.stack(batches[i:j])), seeds)  # [n, B, 784] in
        calls.append((i, batches[i:j], logs, finite))
        i = j
    sums: dict[str, float] = {}
    for i, call_batches, logs, finite in calls:
        finite = np.asarray(finite)
        if not finite.all():
            return sums, i + int(np.argmin(finite))
        for name, v in logs.items():
            for v_s, b in zip(np.asarray(v), call_batches):
                sums[name] = sums.get(name, 0.0) + float(v_s) * len(b)
    return sums, None


class _Inputs:
    """What the steps and the validation are fed: the training digits (on the device once;
    batches are gathered there) and the fixed validation set, float32 [N, 784]. Grey values
    (binarize none) are dequantized afresh every epoch, seeded by the data seed, the training
    seed (a seed sweep redraws it, as it does a dynamic binarization) and the epoch; every
    other input is one array for the whole run."""

    def __init__(self, run: RunConfig, x_train: np.ndarray, x_valid: np.ndarray):
        self.x_train, self.redraw = x_train, run.data.binarize == "none"
        self.seed = [run.data.seed + 2, run.train.seed] if self.redraw else run.data.seed + 2
        xs = train_inputs(x_train, run.data.binarize, self.seed)
        self.valid = eval_inputs(x_valid, run.data.binarize, run.data.seed + 3)
        self.n = len(xs)
        self.xs = ops.convert_to_tensor(xs)  # [N, 784]

    def for_epoch(self, epoch: int):
        if self.redraw and epoch > 1:  # epoch 1's draw is self.xs already
            self.xs = ops.convert_to_tensor(train_inputs(self.x_train, "none", self.seed, epoch))
        return self.xs


def _non_finite(run: RunConfig, epoch: int, bad: int, steps_per_epoch: int) -> NonFiniteError:
    return NonFiniteError(
        f"model '{run.name}': loss or gradient became non-finite at epoch {epoch}, "
        f"step {bad + 1}/{steps_per_epoch}. Likely causes: learning rate too high "
        f"(train.learning_rate={run.train.learning_rate:g}: try 10x smaller)"
        + (", or a too small Gaussian decoder scale (model.decoder_scale)"
           if run.model.decoder == "gaussian" else "")
        + ". The last good checkpoint is kept.")


def _check_diverged(run: RunConfig, epoch: int, value: float, steps_per_epoch: int) -> None:
    floor = diverged_below(run)
    if floor is not None and not value >= floor:
        # Raised before this epoch is logged or checkpointed: the checkpoint on disk
        # stays the last epoch that passed this rule, or an unchecked one after it when
        # checkpoint_every is no multiple of valid_every (the defaults, 10 and 5, are).
        raise DivergedError(
            f"model '{run.name}': training diverged at epoch {epoch} (steps "
            f"{(epoch - 1) * steps_per_epoch + 1}-{epoch * steps_per_epoch}, "
            f"{steps_per_epoch}/epoch): validation bound {value:.6g} nats, below "
            f"{floor:.0f} (twice what a decoder answering 0.5 for every pixel scores). "
            f"Likely cause: learning rate too high (train.learning_rate="
            f"{run.train.learning_rate:g}: try 10x smaller). The last good checkpoint is kept.")


def _epoch(run: RunConfig, vae: models.VAE, optimizer, fns, inputs: _Inputs, epoch: int,
           result: TrainResult) -> dict:
    """Train epoch `epoch` and validate it if `train.validates` it: the epoch's logs (valid_*
    keys on validated epochs only). fns: (step, eval, shared bounds)."""
    t, (step, eval_fn, shared_fn) = run.train, fns
    steps_per_epoch = -(-inputs.n // t.batch_size)
    lr = t.learning_rate_at(epoch)
    if t.schedule != "constant":
        # a variable of the optimizer: TF's step reads it; JAX's reads it with the other
        # slots at its first call after a write-back (every epoch ends with one)
        optimizer.learning_rate.assign(lr)
    tic = time.perf_counter()
    order = np.random.default_rng([t.seed, epoch]).permutation(inputs.n)
    sums, bad = train_epoch(step, inputs.for_epoch(epoch), order, t.batch_size, t.seed,
                            (epoch - 1) * steps_per_epoch, t.steps_per_execution)
    vae.write_back()
    if bad is not None:
        raise _non_finite(run, epoch, bad, steps_per_epoch)
    seconds = time.perf_counter() - tic
    valid = {}
    if t.validates(epoch):
        # Validation reads the weights and draws from its own fixed stateless seeds: skipping
        # it leaves training's random streams and state untouched (tests/test_train.py).
        tic = time.perf_counter()
        valid = evaluate_bound(eval_fn, inputs.valid, seed=10_000 + t.seed)
        # Only validated epochs are checked: a run diverging without a non-finite step (those
        # stop at once, `train_epoch`) is caught up to valid_every - 1 epochs later.
        _check_diverged(run, epoch, valid["bound"], steps_per_epoch)
        valid.update(posterior_width(vae, inputs.valid))
        # another seed than the own bound's: k=valid_k samples, cost ~ one forward epoch
        # over the validation digits at that k
        valid.update(evaluate_bound(shared_fn, inputs.valid, seed=20_000 + t.seed))
        result.valid_seconds += time.perf_counter() - tic
    logs = {"epoch": epoch, "seconds": seconds, "samples_per_s": inputs.n / seconds}
    if t.schedule != "constant":
        logs["learning_rate"] = lr
    logs.update({f"train_{name}": v / inputs.n for name, v in sums.items()})
    logs.update({f"valid_{name}": v for name, v in valid.items()})
    return logs


def train(run: RunConfig, x_train: np.ndarray, x_valid: np.ndarray, *,
          on_epoch: Callable[[dict], None] | None = None,
          checkpoint: Path | None = None, checkpoint_extra: dict | None = None,
          progress: Progress | None = None,
          init_weights: tuple[list, list] | None = None,
          resume: Checkpoint | None = None) -> TrainResult:
    """Train one model. x_train, x_valid: uint8 [N, 28, 28] as prepared.

    `on_epoch(logs)` is called after every epoch with the epoch number, train bound and
    terms, seconds, and the valid_* values on the epochs `train.validates`. With
    `checkpoint`, the state is saved there every `train.checkpoint_every` epochs and
    restored from it at start when it exists; the caller removes it once the outputs are
    safely written. `resume`: a checkpoint already
    read (`open_checkpoint`) to restore instead, so the file is not read a second time.

    `init_weights` (encoder weights, decoder weights): start from these instead of a fresh
    initialisation (objective switching, `init_from`); the optimizer starts fresh.
    train.schedule sets the learning rate of every epoch (`TrainConfig.learning_rate_at`);
    train.patience / restore_best: see `Best`.
    """
    t = run.train
    keras.utils.set_random_seed(t.seed)
    vae = models.VAE.build(run.model)
    if init_weights is not None:
        vae.encoder.set_weights(init_weights[0])
        vae.decoder.set_weights(init_weights[1])
    optimizer = make_optimizer(vae, run, t.learning_rate)
    fns = (make_step(vae, run, optimizer, run.data.binarize == "dynamic", t.jit),
           make_eval(vae, run, t.jit), make_valid_bounds(vae, t.valid_k, t.jit))
    inputs = _Inputs(run, x_train, x_valid)
    history: list[dict] = []
    start_epoch = 0
    best = Best(t.patience, t.restore_best) if t.patience is not None or t.restore_best else None
    if resume is None and checkpoint is not None and checkpoint.exists():
        resume = read_checkpoint(checkpoint)
    if resume is not None:
        restore_checkpoint(resume, vae, optimizer, best)
        start_epoch, history = resume.meta["epoch"], list(resume.meta["history"])
    result = TrainResult(vae.encoder, vae.decoder, history, resumed_from=start_epoch, vae=vae)
    progress = progress or Progress(run.name, t.epochs)
    for epoch in range(start_epoch + 1, t.epochs + 1):
        if best is not None and best.stopped:  # a checkpoint of a run that stopped early
            break
        logs = _epoch(run, vae, optimizer, fns, inputs, epoch, result)
        result.seconds += logs["seconds"]
        history.append(logs)
        stop = best.update(epoch, logs, vae) if best is not None else False
        progress.epoch(logs)
        if on_epoch:
            on_epoch(logs)
        if checkpoint is not None and (epoch % t.checkpoint_every == 0 or epoch == t.epochs
                                       or stop):
            save_checkpoint(checkpoint, vae, optimizer, epoch, history, checkpoint_extra or {},
                            best)
        if stop:
            break
    return _finish(result, best, t, inputs.n * (result.epochs_trained - start_epoch))


def _finish(result: TrainResult, best: Best | None, t, samples: int) -> TrainResult:
    """Early stopping's outcome (and the best epoch's weights put back when asked), and the
    training speed over the `samples` digits trained in this process."""
    if best is not None:
        result.best_epoch = best.epoch or None
        result.stopped_early = best.stopped and result.epochs_trained < t.epochs
        if t.restore_best and best.weights is not None:
            best.put_back(result.vae)
            result.restored_best = True
    result.samples_per_s = samples / result.seconds if result.seconds else 0.0
    return result
