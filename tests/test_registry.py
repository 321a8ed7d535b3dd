"""Adding an objective is one registry entry plus its function (README, "Tighter bounds and
gradient estimators"): the README's worked example, the Renyi bound of Li & Turner 2016 with
its own hyperparameter alpha, registered here for the test only, is validated by
vaelab.config from its HParam, matches the maths it claims, and trains."""
from vaelab.quiet import silence_tf

silence_tf()

import io  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import ops  # noqa: E402

from vaelab import backend, models, objectives, registry, train  # noqa: E402
from vaelab.config import ModelConfig, ParamsError, parse_params  # noqa: E402
from vaelab.objectives import Bound, _sample_log_weights, iwae_from_log_weights  # noqa: E402

# --- the worked example, as in the README -------------------------------------------------
ALPHA = registry.HParam("alpha", float, 0.5, low=0.0, high=0.99,
                        help="0: the IWAE bound, towards 1: the ELBO")
VR = registry.ObjectiveSpec("vr", "Li & Turner 2016: the Renyi bound", "iwae", hparams=(ALPHA,))


def vr(x, q, p_z, decode, k=1, seed=None, alpha=0.5) -> Bound:
    log_w, _, terms = _sample_log_weights(x, q, p_z, decode, k, seed, "standard")
    return Bound(iwae_from_log_weights((1 - alpha) * log_w) / (1 - alpha), terms)
# -------------------------------------------------------------------------------------------


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(registry.OBJECTIVES, "vr", VR)
    monkeypatch.setitem(registry.HPARAMS, "alpha", ALPHA)
    monkeypatch.setitem(objectives.FUNCTIONS, "vr", vr)


def params(**entry):
    return parse_params({"model": {"latent": 3, "hidden": [16]},
                         "train": {"epochs": 2, "batch_size": 40, "valid_k": 3},
                         "models": {"m": {"objective": "vr", "k": 4, **entry}}})


def test_its_hyperparameter_is_validated_from_its_spec(registered):
    assert params(alpha=0.25).models["m"].options() == {"alpha": 0.25}
    assert params().models["m"].options() == {"alpha": 0.5}  # the spec's default
    assert params().models["m"].as_flat_dict()["alpha"] == 0.5  # model.json, MLflow params
    for value, words in ((2.0, "models.m.alpha: must be in [0, 0.99] (0: the IWAE bound"),
                         ("x", "models.m.alpha: must be a finite number"),
                         (True, "models.m.alpha: must be a finite number")):
        with pytest.raises(ParamsError, match=words.replace("[", r"\[").replace("(", r"\(")):
            params(alpha=value)
    with pytest.raises(ParamsError, match=r"models.m.alpha: does not apply to objective iwae "
                                          r"\(only to vr\)"):
        parse_params({"models": {"m": {"objective": "iwae", "k": 4, "alpha": 0.5}}})
    with pytest.raises(ParamsError, match="models.m.m: does not apply to objective vr"):
        params(m=2)


def test_without_the_entry_the_key_is_unknown():
    with pytest.raises(ParamsError, match="models.m.alpha: unknown key"):
        parse_params({"models": {"m": {"objective": "iwae", "k": 4, "alpha": 0.5}}})


def test_its_bound_is_the_maths_it_claims(registered):
    """L_0 is the IWAE bound, and ELBO <= L_alpha <= IWAE for alpha in [0, 1) on the same
    log-weights (Li & Turner 2016, theorem 1)."""
    cfg = ModelConfig(latent=3, hidden=(16,))
    vae = models.VAE.build(cfg)
    x = ops.convert_to_tensor((np.random.default_rng(0).random((6, 784)) < 0.3).astype("float32"))
    seed = backend.seed(1, 2)
    args = (x, vae.posterior(x), vae.prior(), vae.decode, 8, seed)
    iw = objectives.objective("iwae")(*args)
    l0 = objectives.objective("vr", alpha=0.0)(*args)
    np.testing.assert_allclose(np.asarray(l0.bound), np.asarray(iw.bound), rtol=1e-6)
    half = np.asarray(objectives.objective("vr", alpha=0.5)(*args).bound)
    elbo = -np.asarray(iw.terms["distortion"] + iw.terms["rate"])
    assert np.all(elbo <= half + 1e-4) and np.all(half <= np.asarray(iw.bound) + 1e-4)
    assert np.any(half < np.asarray(iw.bound) - 1e-3)  # alpha really enters


def test_it_trains(registered):
    digits = (np.random.default_rng(1).random((160, 28, 28)) * 255).astype(np.uint8)
    run = params(alpha=0.5).models["m"]
    out = train.train(run, digits[:120], digits[120:], progress=train.Progress(
        "m", 2, io.StringIO()))
    assert all(np.isfinite(h["valid_bound"]) and np.isfinite(h["train_bound"])
               for h in out.history)
