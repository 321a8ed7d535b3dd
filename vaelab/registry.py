"""The one registry of training objectives and gradient estimators, as plain data.

Config validation, training, the report, the benchmark and the README read it; the
functions themselves live in vaelab.objectives (which imports Keras, so this module does not:
the `check` stage validates params.yaml without starting TensorFlow).
"""
from __future__ import annotations

from dataclasses import dataclass

IWAE_TYPE = ("standard", "stl", "dreg")


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    source: str  # where it comes from: the article's equation or the paper
    family: str  # "elbo" (a k-sample ELBO), "iwae" (an importance-weighted bound), "prior"
    hparams: tuple[str, ...] = ()  # per-model keys beyond k: "m" (groups), "beta" (mixture)
    estimators: tuple[str, ...] = ("standard",)  # encoder gradient estimators it takes
    uses_encoder: bool = True  # False: only the decoder is trained (eq. 7)
    k_is_1: bool = False  # a one-sample objective
    # uses KL(q || p) in closed form: one stochastic layer only (two layers have no closed
    # form, their q(h2|h1) and p(h1|h2) being networks of a sample)
    analytic_kl: bool = False
    # where its samples of z come from: "posterior" (q(z|x)) or "prior" (p(z), eq. 7); the
    # estimator that upper-bounds its loss samples from the same place
    proposal: str = "posterior"

    @property
    def plain_iwae(self) -> bool:
        """The importance-weighted bound itself (eq. 11), no variant's extra hyperparameter."""
        return self.family == "iwae" and not self.hparams

    def samples(self, k: int, m: int = 1) -> int:
        """Posterior (or prior) samples per digit and step."""
        return m * k if "m" in self.hparams else k


OBJECTIVES: dict[str, ObjectiveSpec] = {s.name: s for s in (
    ObjectiveSpec("elbo_analytic", "eq. (4): the ELBO with its KL in closed form", "elbo",
                  k_is_1=True, analytic_kl=True),
    ObjectiveSpec("elbo_mc", "eq. (5): the one-sample ELBO, KL included", "elbo", k_is_1=True),
    ObjectiveSpec("vae_k", "Burda et al. 2015: the ELBO averaged over k samples", "elbo"),
    ObjectiveSpec("iwae", "eq. (11): the importance-weighted bound IWAE-k", "iwae",
                  estimators=IWAE_TYPE),
    ObjectiveSpec("miwae", "Rainforth et al. 2018: the mean of m independent IWAE-k bounds",
                  "iwae", hparams=("m",), estimators=IWAE_TYPE),
    ObjectiveSpec("ciwae", "Rainforth et al. 2018: beta ELBO + (1 - beta) IWAE-k, same samples",
                  "iwae", hparams=("beta",), estimators=IWAE_TYPE),
    ObjectiveSpec("piwae", "Rainforth et al. 2018: decoder on IWAE-(m k), encoder on "
                  "MIWAE(m, k)", "iwae", hparams=("m",), estimators=IWAE_TYPE),
    ObjectiveSpec("prior_mc", "eq. (7): log-mean of p(x|z) over samples of the prior", "prior",
                  uses_encoder=False, proposal="prior"),
)}

ESTIMATORS: dict[str, str] = {
    "standard": "the reparameterized gradient of the bound itself",
    "stl": "sticking the landing (Roeder et al. 2017): the score term through q's parameters "
           "in log q dropped",
    "dreg": "doubly reparameterized (Tucker et al. 2018): encoder on sum_i stop(w~_i)^2 log w_i "
            "with q's parameters stopped in log q; decoder on the bound",
}

# the asymptotic slope of log SNR against log K, per (estimator, group), Rainforth et al. 2018
# (standard), Tucker et al. 2018 (DReG: the encoder's SNR grows like the decoder's)
SNR_SLOPE = {("standard", "encoder"): -0.5, ("standard", "decoder"): 0.5,
             ("dreg", "encoder"): 0.5, ("dreg", "decoder"): 0.5,
             ("stl", "decoder"): 0.5}



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


# per-model defaults of the hyperparameters above
HPARAM_DEFAULTS = {"m": 1, "beta": 0.5}
