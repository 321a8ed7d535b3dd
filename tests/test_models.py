"""vaelab.models: network shapes, the distributions built from them, and the exported
encoder.keras / decoder.keras, which a fresh Python must load with plain
`keras.saving.load_model(path)` (no custom objects, no vaelab import)."""
from vaelab.quiet import silence_tf

silence_tf()

import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import ops  # noqa: E402

from vaelab import backend, models  # noqa: E402
from vaelab.config import ModelConfig  # noqa: E402
from vaelab import objectives  # noqa: E402
from vaelab.registry import OBJECTIVES  # noqa: E402

BATCH, LATENT = 3, 50
SEED = backend.seed(1, 2)


def as_list(out):
    return [np.asarray(t) for t in out] if isinstance(out, (list, tuple)) else [np.asarray(out)]


@pytest.fixture(scope="module")
def nets():
    """Default-size (784-200-200-50) networks: encoder, Bernoulli, learned- and fixed-scale Gaussian."""
    keras.utils.set_random_seed(0)
    return {
        "encoder": models.build_encoder(ModelConfig()),
        "bernoulli": models.build_decoder(ModelConfig()),
        "gaussian": models.build_decoder(ModelConfig(decoder="gaussian", decoder_scale="learned")),
        "fixed": models.build_decoder(ModelConfig(decoder="gaussian", decoder_scale=0.3)),
    }


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    grey = rng.random((BATCH, 784)).astype(np.float32)
    return {"grey": grey, "binary": (grey < 0.4).astype(np.float32),
            "z": rng.normal(0, 2, (BATCH, LATENT)).astype(np.float32)}


# --------------------------------------------------------------------------------------
# 1. network output shapes

def test_encoder_outputs_loc_and_positive_scale(nets, batch):
    assert nets["encoder"].input_shape == (None, 784)
    loc, scale = as_list(nets["encoder"](batch["grey"]))
    assert loc.shape == scale.shape == (BATCH, LATENT)
    assert np.all(scale > 0)
    assert np.all(scale >= models.SCALE_FLOOR * (1 - 1e-6))
    # hidden sizes are the config's: 784 -> 200 -> 200 -> 50
    dense = [layer.units for layer in nets["encoder"].layers if isinstance(layer, keras.layers.Dense)]
    assert dense == [200, 200, LATENT, LATENT]


def test_bernoulli_decoder_outputs_logits(nets, batch):
    logits = as_list(nets["bernoulli"](batch["z"]))
    assert len(logits) == 1 and logits[0].shape == (BATCH, 784)
    assert np.ptp(logits[0]) > 0  # real logits, not a constant


def test_gaussian_learned_decoder_outputs_loc_and_positive_scale(nets, batch):
    loc, scale = as_list(nets["gaussian"](batch["z"]))
    assert loc.shape == scale.shape == (BATCH, 784)
    assert np.all(scale > 0)
    assert np.all((loc > 0) & (loc < 1))  # sigmoid: grey values
    assert np.ptp(scale) > 0  # learned: depends on z


def test_gaussian_fixed_scale_is_exactly_the_constant(nets, batch):
    z = np.concatenate([batch["z"], 50 * batch["z"]])  # saturated sigmoid too
    loc, scale = as_list(nets["fixed"](z))
    assert loc.shape == scale.shape == (2 * BATCH, 784)
    assert scale.dtype == np.float32
    assert np.all(scale == np.float32(0.3))


# --------------------------------------------------------------------------------------
# 2. distributions built from the networks

@pytest.mark.parametrize("kind", ["bernoulli", "gaussian"])
def test_make_decode_keeps_sample_axes_and_their_order(nets, batch, kind):
    k = 4
    z = np.random.default_rng(1).normal(size=(k, BATCH, LATENT)).astype(np.float32)
    d = models.make_decode(nets[kind], kind)(ops.convert_to_tensor(z))
    assert d.batch_shape == (k, BATCH)
    assert d.event_shape == (784,)
    x = batch["binary"] if kind == "bernoulli" else batch["grey"]
    assert d.log_prob(x).shape == (k, BATCH)
    # element [i, j] is the decoder applied to z[i, j]: folding the sample axis loses nothing
    mean = np.asarray(d.mean())
    for i, j in [(0, 0), (3, 2), (2, 1)]:
        direct = np.asarray(models.decoder_mean(nets[kind], kind, z[i, j][None])[0])
        np.testing.assert_allclose(mean[i, j], direct, rtol=1e-5, atol=1e-6)


def test_posterior_and_prior_shapes(nets, batch):
    q = models.posterior(nets["encoder"], batch["grey"])
    assert q.batch_shape == (BATCH,) and q.event_shape == (LATENT,)
    loc, scale = as_list(nets["encoder"](batch["grey"]))
    np.testing.assert_array_equal(np.asarray(q.mean()), loc)
    np.testing.assert_array_equal(np.asarray(q.stddev()), scale)
    p = models.prior(LATENT)
    assert p.batch_shape == () and p.event_shape == (LATENT,)
    assert q.sample(5, seed=SEED).shape == (5, BATCH, LATENT)


@pytest.mark.parametrize("kind", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("name,estimator", [(n, e) for n in sorted(OBJECTIVES)
                                             for e in OBJECTIVES[n].estimators])
def test_objectives_give_one_bound_per_example(nets, batch, kind, name, estimator):
    x = ops.convert_to_tensor(batch["binary"] if kind == "bernoulli" else batch["grey"])
    options = {"m": 2, "beta": 0.3, "estimator": estimator}
    fn = objectives.objective(name, **options)
    k = 1 if OBJECTIVES[name].k_is_1 else 3
    out = fn(x, models.posterior(nets["encoder"], x), models.prior(LATENT),
             models.make_decode(nets[kind], kind), k, SEED)
    assert out.bound.shape == (BATCH,)
    assert np.all(np.isfinite(np.asarray(out.bound)))
    assert out.terms
    for term, value in {**out.terms, **(out.surrogates or {})}.items():
        assert value.shape == (BATCH,), term


@pytest.mark.parametrize("kind", ["gaussian", "fixed"])
def test_gaussian_log_likelihood_is_the_normal_density_of_the_networks_outputs(nets, batch, kind):
    """p(x|z) of a Gaussian decoder, learned and fixed scale, against scipy.stats.norm at the
    network's own loc and scale, pixel by pixel summed, at [k, B] latents; grey values and
    values outside [0, 1] (the density has no support limits)."""
    from scipy.stats import norm

    k = 2
    z = np.random.default_rng(2).normal(size=(k, BATCH, LATENT)).astype(np.float32)
    d = models.make_decode(nets[kind], "gaussian")(ops.convert_to_tensor(z))
    loc, scale = (np.asarray(t, np.float64).reshape(k, BATCH, 784)
                  for t in nets[kind](z.reshape(k * BATCH, LATENT)))
    for x in (batch["grey"], 1.5 * batch["grey"] - 0.25):
        want = norm.logpdf(x.astype(np.float64), loc, scale).sum(-1)  # [k, B]
        np.testing.assert_allclose(np.asarray(d.log_prob(x)), want, rtol=1e-5)


def test_learned_gaussian_scale_trains_to_the_datas_noise_level():
    """A tiny problem with a known answer: every digit is a constant grey 0.5 plus pixel noise
    of std 0.03 (even pixels) or 0.1 (odd pixels); the best decoder puts its mean at 0.5 and
    its scale at each pixel's noise. 400 steps of train.train (Gaussian path: grey values
    dequantized afresh per epoch) move the learned scale from softplus's ~0.7 to within 15%
    of each pixel's noise (measured: 0.031 and 0.103), at the posterior means of held-out digits."""
    import io

    from vaelab import train
    from vaelab.config import parse_params

    rng = np.random.default_rng(0)
    sigma = np.where(np.arange(784) % 2 == 0, 0.03, 0.1)

    def digits(n):
        grey = np.round(128 + 256 * sigma * rng.standard_normal((n, 784)))
        return np.clip(grey, 0, 255).astype(np.uint8).reshape(n, 28, 28)

    x_train, x_valid = digits(400), digits(50)
    run = parse_params({
        "data": {"binarize": "none"},
        "model": {"latent": 2, "hidden": [8], "decoder": "gaussian", "decoder_scale": "learned"},
        "train": {"epochs": 20, "batch_size": 20, "learning_rate": 0.03, "valid_k": 1},
        "models": {"m": {"objective": "elbo_mc", "k": 1}}}).models["m"]
    r = train.train(run, x_train, x_valid, progress=train.Progress("m", 20, io.StringIO()))
    z = r.encoder(train.eval_inputs(x_valid, "none", 5))[0]
    loc, scale = (np.asarray(t) for t in r.decoder(z))
    for s in (0.03, 0.1):
        on = sigma == s
        assert np.median(scale[:, on]) == pytest.approx(s, rel=0.15), (s, np.median(scale[:, on]))
        assert np.median(loc[:, on]) == pytest.approx(0.5, abs=0.02)


# --------------------------------------------------------------------------------------
# 3. export: a fresh process loads the files with plain keras

LOADER = textwrap.dedent("""
    import sys
    import numpy as np
    import keras

    for kind in ("bernoulli", "gaussian"):
        enc = keras.saving.load_model(f"{kind}/encoder.keras")
        dec = keras.saving.load_model(f"{kind}/decoder.keras")
        for net, name, inp in ((enc, "encoder", np.load("x.npy")), (dec, "decoder", np.load("z.npy"))):
            out = net(inp)
            out = out if isinstance(out, (list, tuple)) else [out]
            for i, t in enumerate(out):
                np.save(f"out_{kind}_{name}_{i}.npy", keras.ops.convert_to_numpy(t))
    assert "vaelab" not in sys.modules
    print("loaded", keras.backend.backend())
""")


@pytest.fixture(scope="module")
def saved(nets, batch, tmp_path_factory):
    """Both models saved with models.save, plus the inputs the fresh process will feed them."""
    root = tmp_path_factory.mktemp("export")
    keras.utils.set_random_seed(1)
    gauss_encoder = models.build_encoder(ModelConfig(decoder="gaussian"))
    pairs = {"bernoulli": (nets["encoder"], nets["bernoulli"]),
             "gaussian": (gauss_encoder, nets["gaussian"])}
    for kind, (enc, dec) in pairs.items():
        models.save(root / kind, enc, dec, {"decoder": kind, "latent": LATENT})
    np.save(root / "x.npy", batch["grey"])
    np.save(root / "z.npy", batch["z"])
    return root, pairs


@pytest.fixture(scope="module")
def exported(saved):
    """One fresh interpreter loads and runs all four saved networks."""
    root, pairs = saved
    env = {**os.environ, "KERAS_BACKEND": backend.NAME, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", LOADER], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"loaded {backend.NAME}" in proc.stdout
    return root, pairs


@pytest.mark.parametrize("kind", ["bernoulli", "gaussian"])
def test_fresh_process_loads_export_with_plain_keras(exported, batch, kind):
    root, pairs = exported
    enc, dec = pairs[kind]
    assert sorted(p.name for p in (root / kind).iterdir()) == ["decoder.keras", "encoder.keras", "model.json"]
    for net, name, inp in ((enc, "encoder", batch["grey"]), (dec, "decoder", batch["z"])):
        mine = as_list(net(inp))
        theirs = sorted(root.glob(f"out_{kind}_{name}_*.npy"))
        assert len(theirs) == len(mine) == (2 if name == "encoder" or kind == "gaussian" else 1)
        for a, path in zip(mine, theirs):
            b = np.load(path)
            assert b.shape == a.shape
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-6, err_msg=path.name)


@pytest.mark.parametrize("kind", ["bernoulli", "gaussian"])
def test_load_round_trip(saved, batch, kind):
    root, pairs = saved
    enc, dec, info = models.load(root / kind)
    # plus the digest binding it to the weights (vaelab.provenance)
    assert info == {"decoder": kind, "latent": LATENT, "weights_sha256": info["weights_sha256"]}
    assert json.loads((root / kind / "model.json").read_text()) == info
    for original, loaded, inp in ((pairs[kind][0], enc, batch["grey"]), (pairs[kind][1], dec, batch["z"])):
        assert loaded is not original
        for a, b in zip(as_list(original(inp)), as_list(loaded(inp))):
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)


def test_load_names_the_missing_files(saved, tmp_path):
    root, _ = saved
    folder = tmp_path / "half_saved"
    shutil.copytree(root / "bernoulli", folder)
    (folder / "decoder.keras").unlink()
    (folder / "model.json").unlink()
    with pytest.raises(FileNotFoundError) as err:
        models.load(folder)
    msg = str(err.value)
    assert "decoder.keras" in msg and "model.json" in msg
    assert "encoder.keras" not in msg
    assert str(folder) in msg and "half_saved" in msg

    with pytest.raises(FileNotFoundError, match="encoder.keras, decoder.keras, model.json"):
        models.load(tmp_path / "never_trained")
