"""Two stochastic layers (model.layers: 2, vaelab.models.VAE): the joint distributions against
a direct computation of log p(x, h1, h2) - log q(h1, h2 | x) from the networks' outputs,
seeds, the export contract (a fresh process with plain Keras rebuilds log w), training and
evaluation on a tiny model, and the config rules. Rerun on JAX by tests/test_backends.py."""
from vaelab.quiet import silence_tf

silence_tf()

import dataclasses  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import ops  # noqa: E402

from vaelab import backend, card, evaluate, models, objectives, train  # noqa: E402
from vaelab.config import EvaluateConfig, ModelConfig, ParamsError, parse_params  # noqa: E402
from vaelab.objectives import iwae  # noqa: E402

CFG = ModelConfig(latent=3, hidden=(12,), layers=2, h1_latent=5, h1_hidden=(7,))
B, K = 4, 6


def normal_logpdf(v, loc, scale):
    return (-0.5 * ((v - loc) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi)).sum(-1)


def direct_log_w(encoder, decoder, x, h1, h2):
    """log p(x|h1) + log p(h1|h2) + log p(h2) - log q(h1|x) - log q(h2|h1), in numpy from
    the exported networks' outputs alone (README, export contract). h1, h2 [k, B, d]."""
    k, b = h1.shape[:2]
    xs = np.broadcast_to(x, (k, *x.shape)).reshape(k * b, -1)
    f1, f2 = h1.reshape(k * b, -1), h2.reshape(k * b, -1)
    loc1, scale1, loc2, scale2 = (np.asarray(t, np.float64) for t in encoder([xs, f1]))
    ploc, pscale, logits = (np.asarray(t, np.float64) for t in decoder([f2, f1]))
    f1, f2, xs = (a.astype(np.float64) for a in (f1, f2, xs))
    log_px = (xs * logits - np.logaddexp(0, logits)).sum(-1)
    log_p = log_px + normal_logpdf(f1, ploc, pscale) + normal_logpdf(f2, 0.0, 1.0)
    log_q = normal_logpdf(f1, loc1, scale1) + normal_logpdf(f2, loc2, scale2)
    return (log_p - log_q).reshape(k, b)


@pytest.fixture(scope="module")
def vae():
    keras.utils.set_random_seed(0)
    return models.VAE.build(CFG)


@pytest.fixture(scope="module")
def x():
    return (np.random.default_rng(0).random((B, 784)) < 0.3).astype(np.float32)


def library_log_w(vae, x, seed):
    q, p = vae.posterior(ops.convert_to_tensor(x)), vae.prior()
    z = q.sample(K, seed=seed)
    lw = vae.decode(z).log_prob(x) + p.log_prob(z) - q.log_prob(z)
    return z, np.asarray(lw)


def test_two_layer_bound_is_the_direct_log_density_ratio(vae, x):
    """The joint q and p give [K, B] log-densities that sum to log p(x, h1, h2) -
    log q(h1, h2 | x) computed directly; the IWAE bound is its log-mean-exp."""
    seed = backend.seed(3, 4)
    z, lw = library_log_w(vae, x, seed)
    assert set(z) == {"h1", "h2"}
    assert z["h1"].shape == (K, B, 5) and z["h2"].shape == (K, B, 3) and lw.shape == (K, B)
    want = direct_log_w(vae.encoder, vae.decoder, x, np.asarray(z["h1"]), np.asarray(z["h2"]))
    np.testing.assert_allclose(lw, want, rtol=1e-5, atol=1e-3)
    b = iwae(ops.convert_to_tensor(x), vae.posterior(ops.convert_to_tensor(x)), vae.prior(),
             vae.decode, K, seed)
    from scipy.special import logsumexp
    np.testing.assert_allclose(np.asarray(b.bound), logsumexp(want, 0) - np.log(K),
                               rtol=1e-5, atol=1e-3)


def direct_log_q_minus_log_p(encoder, decoder, x, h1, h2):
    """log q(h1|x) + log q(h2|h1) - log p(h1|h2) - log p(h2), in numpy from the
    sub-networks' outputs. h1, h2 [k, B, d] -> [k, B]."""
    k, b = h1.shape[:2]
    xs = np.broadcast_to(x, (k, *x.shape)).reshape(k * b, -1)
    f1, f2 = h1.reshape(k * b, -1), h2.reshape(k * b, -1)
    loc1, scale1, loc2, scale2 = (np.asarray(t, np.float64) for t in encoder([xs, f1]))
    ploc, pscale = (np.asarray(t, np.float64) for t in decoder.get_layer(models.P_H1)(f2))
    f1, f2 = f1.astype(np.float64), f2.astype(np.float64)
    out = (normal_logpdf(f1, loc1, scale1) + normal_logpdf(f2, loc2, scale2)
           - normal_logpdf(f1, ploc, pscale) - normal_logpdf(f2, 0.0, 1.0))
    return out.reshape(k, b)


def rao_blackwell_rate(vae, x, n, seed):
    """An independent estimate of the two-layer rate KL(q(h1, h2 | x) || p(h1, h2)) per digit,
    with its standard error: h1 and h2 drawn in numpy, and the h2 part in closed form,
    KL = E_q(h1|x)[log q(h1|x) + KL(q(h2|h1) || N(0, I)) - E_q(h2|h1) log p(h1|h2)]."""
    rng = np.random.default_rng(seed)
    loc1, scale1 = (np.asarray(t, np.float64) for t in vae.encoder.get_layer(models.Q_H1)(x))
    h1 = loc1 + scale1 * rng.standard_normal((n, *loc1.shape))  # [n, B, h1]
    flat = h1.reshape(-1, h1.shape[-1]).astype(np.float32)
    loc2, scale2 = (np.asarray(t, np.float64) for t in vae.encoder.get_layer(models.Q_H2)(flat))
    kl2 = 0.5 * (loc2**2 + scale2**2 - 1 - 2 * np.log(scale2)).sum(-1)
    h2 = loc2 + scale2 * rng.standard_normal(loc2.shape)
    ploc, pscale = (np.asarray(t, np.float64)
                    for t in vae.decoder.get_layer(models.P_H1)(h2.astype(np.float32)))
    per = (normal_logpdf(h1, loc1, scale1)
           + (kl2 - normal_logpdf(flat.astype(np.float64), ploc, pscale)).reshape(n, -1))
    return per.mean(0), per.std(0, ddof=1) / np.sqrt(n)


def test_two_layer_rate_is_the_kl_of_the_joint_posterior_to_the_joint_prior(vae, x):
    """The rate term of the objectives (and the evaluate stage's `rate` for two layers,
    from its last chunk of samples) is E_q[log q(h1, h2 | x) - log p(h1, h2)]: at the same
    samples, the mean of the direct log-density difference; against an independent
    estimate (its own draws, the h2 part in closed form), within 5 standard errors per
    digit. Leaving out a term (q(h2|h1), p(h1|h2)) or a layer moves it by many."""
    xt = ops.convert_to_tensor(x)
    k, seed = 2000, backend.seed(21, 0)
    z = vae.posterior(xt).sample(k, seed=seed)
    per = direct_log_q_minus_log_p(vae.encoder, vae.decoder, x, np.asarray(z["h1"]),
                                   np.asarray(z["h2"]))  # [k, B]
    for name in ("iwae", "elbo_mc", "vae_k"):
        n = 1 if name == "elbo_mc" else k
        b = objectives.objective(name)(xt, vae.posterior(xt), vae.prior(), vae.decode, n, seed)
        np.testing.assert_allclose(np.asarray(b.terms["rate"]), per[:n].mean(0), rtol=1e-5,
                                   atol=1e-4, err_msg=name)
    want, want_se = rao_blackwell_rate(vae, x, 4000, seed=5)
    se = np.sqrt(want_se**2 + per.var(0, ddof=1) / k)
    assert np.all(np.abs(per.mean(0) - want) < 5 * se), (per.mean(0), want, se)
    # the evaluate stage's two-layer rate: the last chunk's k samples per digit
    _, kl = evaluate.log_weights(vae, x, 2 * k, k, B, seed=4)
    se = np.sqrt(want_se**2 + per.var(0, ddof=1) / k)
    assert np.all(np.abs(kl - want) < 5 * se), (kl, want, se)
    # power: the rate is several nats per digit and its error a small fraction of one
    assert np.all(want > 20 * se), (want, se)


def test_samples_are_pure_functions_of_the_seed(vae, x):
    q = vae.posterior(ops.convert_to_tensor(x))
    a, b, c = (q.sample(K, seed=s) for s in (backend.seed(1, 2), backend.seed(1, 2),
                                              backend.seed(1, 3)))
    for n in ("h1", "h2"):
        np.testing.assert_array_equal(np.asarray(a[n]), np.asarray(b[n]))
        assert not np.array_equal(np.asarray(a[n]), np.asarray(c[n]))
    p1, p2 = (vae.prior().sample(K, seed=backend.seed(5, 6)) for _ in range(2))
    np.testing.assert_array_equal(np.asarray(p1["h1"]), np.asarray(p2["h1"]))
    assert p1["h1"].shape == (K, 5) and p1["h2"].shape == (K, 3)
    np.testing.assert_array_equal(np.asarray(vae.sample(3, backend.seed(1, 0))),
                                  np.asarray(vae.sample(3, backend.seed(1, 0))))


def test_groups_put_p_h1_given_h2_in_the_decoder(vae):
    groups = dict(vae.groups)
    dec = {id(v) for v in groups["decoder"]}
    assert {id(v) for v in vae.decoder.get_layer(models.P_H1).trainable_variables} <= dec
    assert not dec & {id(v) for v in groups["encoder"]}
    assert len(vae.variables) == len(groups["encoder"]) + len(groups["decoder"])


def test_prior_std_is_the_std_of_prior_draws_of_h1(vae):
    """models.VAE.prior_std (law of total variance over fixed h2 draws) against the std of
    200,000 draws of h1 from the joint prior: within 4 standard errors per unit."""
    std1, std2 = vae.prior_std()
    assert np.array_equal(std2, np.ones(CFG.latent, np.float32))
    n = 200_000
    h1 = np.asarray(vae.prior().sample(n, seed=backend.seed(3, 0))["h1"], np.float64)
    sample_std = h1.std(0)
    # se of a sample std ~ std / sqrt(2n) for near-Gaussian draws; h1 is a Gaussian mixture,
    # so allow its kurtosis: se = std * sqrt((kurtosis - 1) / (4 n))
    kurt = ((h1 - h1.mean(0)) ** 4).mean(0) / sample_std**4
    se = sample_std * np.sqrt((kurt - 1) / (4 * n)) + std1 * np.sqrt(0.5 / 10_000)
    assert np.all(np.abs(std1 - sample_std) < 4 * se), (std1, sample_std, se)


def _widen_h1(vae, c):
    """The same model in another gauge: h1 -> c h1. q(h1|x) and p(h1|h2) give c times the
    loc and scale; the first layers that read h1 (q(h2|h1), p(x|h1)) take kernel / c."""
    out = models.VAE.build(CFG)
    out.encoder.set_weights(vae.encoder.get_weights())
    out.decoder.set_weights(vae.decoder.get_weights())
    for net, name in ((out.encoder, models.Q_H1), (out.decoder, models.P_H1)):
        g = net.get_layer(name)
        loc = g.get_layer(f"{name}_loc")
        loc.kernel.assign(loc.kernel * c)
        loc.bias.assign(loc.bias * c)
        r = g.get_layer(f"{name}_scale")  # Rescaling(1, offset=floor): c (softplus + floor)
        r.scale, r.offset = c * r.scale, c * r.offset
    for reader in (out.encoder.get_layer(models.Q_H2).get_layer(f"{models.Q_H2}_0"),
                   out.decoder.get_layer(models.P_X).get_layer("dec_0")):
        reader.kernel.assign(reader.kernel / c)
    return out


def test_h1_activity_is_read_in_units_of_its_prior_std(vae, x):
    """p(h1|h2) is learned, so h1's scale is free: the model with q(h1|x) and p(h1|h2) both
    c times wider (and h1's readers c times narrower) is the same model: the same log w draw
    by draw. Its active units and widths, read in units of the prior's std, are the same;
    Burda's raw threshold on Cov_x E_q[h1] (made for a N(0, 1) prior) counts differently."""
    c = 1 / 30  # narrower: Burda's raw count falls from the untrained model's all-active
    wide = _widen_h1(vae, c)
    np.testing.assert_allclose(library_log_w(wide, x, backend.seed(5, 0))[1],
                               library_log_w(vae, x, backend.seed(5, 0))[1], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(wide.prior_std()[0], c * vae.prior_std()[0], rtol=1e-4)
    for (a_loc, a_scale), (b_loc, b_scale) in zip(wide.posterior_params(x), vae.posterior_params(x)):
        np.testing.assert_allclose(a_loc, b_loc, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(a_scale, b_scale, rtol=1e-4)
    raw = lambda m: models.posterior_params(m.encoder.get_layer(models.Q_H1), x)[0]  # noqa: E731
    assert models.active_mask(raw(wide)).sum() < models.active_mask(raw(vae)).sum()
    assert models.active_mask(wide.posterior_params(x)[0][0]).sum() == \
        models.active_mask(vae.posterior_params(x)[0][0]).sum()


# --------------------------------------------------------------------------------------
# STL and DReG with two layers: q carries its own stopped copy (models.posterior2)

def _flat(grads, variables):
    return np.concatenate([np.zeros(int(np.prod(v.shape))) if g is None
                           else np.ravel(np.asarray(g, np.float64)) for g, v in zip(grads, variables)])


def test_stopped_joint_posterior_keeps_the_density_and_drops_only_the_score(vae, x):
    """objectives.stop_parameters on a joint q: the same log q at every sample; at a sample
    held fixed, no gradient reaches the encoder (the score term is gone); at a live
    reparameterized sample, the path derivative does (through h1 into q(h2|h1) too)."""
    xt = ops.convert_to_tensor(x)
    enc = vae.encoder.trainable_variables
    seed = backend.seed(9, 0)
    q = vae.posterior(xt)
    z = q.sample(K, seed=seed)
    np.testing.assert_allclose(np.asarray(objectives.stop_parameters(q).log_prob(z)),
                               np.asarray(q.log_prob(z)), rtol=1e-6)

    def log_q(stopped: bool, fixed: bool):
        def f():
            q = vae.posterior(xt)
            z = q.sample(K, seed=seed)
            z = {n: ops.stop_gradient(t) for n, t in z.items()} if fixed else z
            return ops.sum((objectives.stop_parameters(q) if stopped else q).log_prob(z))
        return _flat(backend.value_and_grad(f, enc)()[1], enc)

    assert np.all(log_q(stopped=True, fixed=True) == 0)
    assert np.any(log_q(stopped=False, fixed=True) != 0)
    path = log_q(stopped=True, fixed=False)
    assert np.any(path != 0)
    # the path derivative reaches q(h2|h1)'s weights through the sampled h2 and h1
    n_q1 = sum(int(np.prod(v.shape)) for v in vae.encoder.get_layer(models.Q_H1).trainable_variables)
    assert [id(v) for v in enc[:len(vae.encoder.get_layer(models.Q_H1).trainable_variables)]] == \
        [id(v) for v in vae.encoder.get_layer(models.Q_H1).trainable_variables]
    assert np.any(path[n_q1:] != 0) and np.any(path[:n_q1] != 0)


def test_a_joint_without_its_stopped_copy_is_refused():
    """A joint q that does not bring stopped_parameters() is refused, never returned
    unstopped (that would be the standard estimator under the name STL or DReG)."""
    from vaelab.backend import tfd
    q = tfd.JointDistributionNamed({"a": models.prior(2), "b": lambda a: models.prior(2)})
    with pytest.raises(NotImplementedError, match="stopped_parameters"):
        objectives.stop_parameters(q)


def _encoder_draws(vae, estimator, x1, k, chunks=20, reps=1000):
    """[chunks, n_params] means of `reps` independent encoder-gradient draws of IWAE-k on
    one digit (reps copies of it in one batch: every copy draws its own samples)."""
    f = objectives.objective("iwae", estimator=estimator)
    xt = ops.convert_to_tensor(np.tile(x1, (reps, 1)))
    enc = vae.encoder.trainable_variables

    def loss(s):
        b = f(xt, vae.posterior(xt), vae.prior(), vae.decode, k, s)
        return -ops.mean(objectives.group_targets(b)["encoder"])

    grad = backend.value_and_grad(loss, enc)
    return np.stack([_flat(grad(backend.seed(200 + c, 0))[1], enc) for c in range(chunks)])


@pytest.mark.parametrize("estimator", ["stl", "dreg"])
def test_estimators_leave_the_two_layer_bound_and_decoder_gradient_alone(vae, x, estimator):
    xt, seed = ops.convert_to_tensor(x), backend.seed(4, 0)
    dec = vae.decoder.trainable_variables
    out = {}
    for e in ("standard", estimator):
        f = objectives.objective("iwae", estimator=e)

        def loss():
            b = f(xt, vae.posterior(xt), vae.prior(), vae.decode, K, seed)
            return -ops.mean(objectives.group_targets(b)["decoder"]), b.bound

        out[e] = (np.asarray(loss()[1]),
                  _flat(backend.value_and_grad(lambda: loss()[0], dec)()[1], dec))
    np.testing.assert_array_equal(out[estimator][0], out["standard"][0])
    np.testing.assert_allclose(out[estimator][1], out["standard"][1], rtol=1e-5, atol=1e-7)


def test_dreg_two_layer_encoder_gradient_has_the_standard_expectation(vae, x):
    """Tucker et al. 2018 for a hierarchical q: DReG's encoder gradient of IWAE-k has the
    standard estimator's expectation. Per parameter within 5 standard errors of the
    difference (the untrained encoder is far from the posterior: a real gradient), with
    power (many parameters far from 0) and with lower variance than the standard one."""
    std = _encoder_draws(vae, "standard", x[:1], 4)
    dreg = _encoder_draws(vae, "dreg", x[:1], 4)
    diff = dreg.mean(0) - std.mean(0)
    se = np.sqrt(dreg.var(0, ddof=1) / len(dreg) + std.var(0, ddof=1) / len(std))
    live = se > 0  # weights of units that no draw moves (tanh saturation aside, none)
    assert np.all(np.abs(diff[live]) < 5 * se[live]), (np.abs(diff / np.where(live, se, 1)).max())
    assert np.mean(np.abs(std.mean(0)[live]) > 10 * se[live]) > 0.2
    assert np.median(dreg.var(0)[live] / std.var(0)[live]) < 1


EXPORT_CHECK = textwrap.dedent("""
    import json, sys
    import keras, numpy as np
    folder = sys.argv[1]
    enc = keras.saving.load_model(folder + "/encoder.keras")
    dec = keras.saving.load_model(folder + "/decoder.keras")
    info = json.load(open(folder + "/model.json"))
    assert info["model.layers"] == 2
    a = np.load(folder + "/z.npz")
    x, h1, h2 = a["x"], a["h1"], a["h2"]  # [B, 784], [k, B, h1], [k, B, h2]
    k, b = h1.shape[:2]
    xs = np.broadcast_to(x, (k, *x.shape)).reshape(k * b, -1)
    f1, f2 = h1.reshape(k * b, -1), h2.reshape(k * b, -1)
    loc1, scale1, loc2, scale2 = (np.asarray(t, np.float64) for t in enc([xs, f1]))
    ploc, pscale, logits = (np.asarray(t, np.float64) for t in dec([f2, f1]))
    def n(v, m, s):
        return (-0.5 * ((v - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)).sum(-1)
    lw = ((xs * logits - np.logaddexp(0, logits)).sum(-1) + n(f1, ploc, pscale) + n(f2, 0, 1)
          - n(f1, loc1, scale1) - n(f2, loc2, scale2)).reshape(k, b)
    np.save(folder + "/lw.npy", lw)
""")


def test_export_round_trip_rebuilds_log_w_with_plain_keras(vae, x, tmp_path):
    """models.save -> a fresh Python with plain Keras (no vaelab) loads encoder.keras and
    decoder.keras and rebuilds log w at given (h1, h2) as the library computes it; the
    library's models.VAE.from_folder gives the same log w too."""
    info = {"model.decoder": "bernoulli", "model.latent": 3, "model.layers": 2,
            "model.h1_latent": 5, "model.h1_hidden": [7]}
    models.save(tmp_path, vae.encoder, vae.decoder, info)
    z, lw = library_log_w(vae, x, backend.seed(7, 8))
    np.savez(tmp_path / "z.npz", x=x, h1=np.asarray(z["h1"]), h2=np.asarray(z["h2"]))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", EXPORT_CHECK, str(tmp_path)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "lw.npy"), lw, rtol=1e-5, atol=1e-3)

    m = models.VAE.from_folder(tmp_path)
    assert m.layers == 2 and m.latent == 3 and m.name == tmp_path.name
    q, p_z = m.posterior(ops.convert_to_tensor(x)), m.prior()
    lw2 = m.decode(z).log_prob(x) + p_z.log_prob(z) - q.log_prob(z)
    np.testing.assert_allclose(np.asarray(lw2), lw, rtol=1e-6, atol=1e-4)


def test_reconstruct_builds_on_a_symbolic_input(vae, x):
    """The logged MLflow model is keras.Model(x_in, vae.reconstruct(x_in)) (vaelab.fit): it
    builds for two layers (p_x, one output, returns a list when called symbolically) and
    gives the eager reconstruction."""
    x_in = keras.Input((784,))
    net = keras.Model(x_in, vae.reconstruct(x_in))
    np.testing.assert_allclose(np.asarray(net(x)),
                               np.asarray(vae.reconstruct(ops.convert_to_tensor(x))), rtol=1e-6)


def direct_active_units(vae, x):
    """Burda et al.'s count, Var_x E_q[u] > 0.01, per layer, from the sub-networks' outputs:
    h1 in units of its prior's std (models.VAE.prior_std, tested against prior draws above),
    h2 (a N(0, I) prior) read by q(h2|h1) at h1 = E_q[h1|x]."""
    loc1 = np.asarray(vae.encoder.get_layer(models.Q_H1)(x)[0], np.float64)
    std1 = vae.prior_std()[0]
    loc2 = np.asarray(vae.encoder.get_layer(models.Q_H2)(loc1.astype(np.float32))[0])
    return int(((loc1 / std1).var(0) > 0.01).sum()), int((loc2.var(0) > 0.01).sum())


def tiny_params(objective="iwae", k=3, layers=2, **entry):
    return parse_params({
        "model": {"latent": 3, "hidden": [16], "layers": layers, "h1_latent": 4,
                  "h1_hidden": [8]},
        "train": {"epochs": 1, "batch_size": 50},
        "models": {"m": {"objective": objective, "k": k, **entry}}})


@pytest.fixture(scope="module")
def digits():
    return (np.random.default_rng(1).random((160, 28, 28)) * 255).astype(np.uint8)


@pytest.mark.parametrize("objective,k,entry", [("iwae", 3, {}), ("prior_mc", 3, {}),
                                               ("iwae", 3, {"estimator": "dreg"})])
def test_two_layer_training_and_evaluation(objective, k, entry, digits):
    """One tiny epoch: deterministic (same weights twice), finite, active units per layer;
    the evaluation pieces run on the trained model."""
    run = tiny_params(objective, k, **entry).models["m"]
    out = [train.train(run, digits[:120], digits[120:], progress=train.Progress(
        "m", 1, io.StringIO())) for _ in range(2)]
    for a, b in zip(out[0].encoder.get_weights() + out[0].decoder.get_weights(),
                    out[1].encoder.get_weights() + out[1].decoder.get_weights()):
        np.testing.assert_array_equal(a, b)
    h = out[0].history[-1]
    assert np.isfinite(h["valid_Lk"]) and np.isfinite(h["train_bound"])
    m = models.VAE(out[0].encoder, out[0].decoder, info=run.as_flat_dict())
    # the logged active units per layer are Burda's count on the validation digits as fed
    xv = train.eval_inputs(digits[120:], run.data.binarize, run.data.seed + 3)
    n1, n2 = direct_active_units(m, xv)
    assert (h["valid_active_units_h1"], h["valid_active_units_h2"]) == (n1, n2)
    assert h["valid_active_units"] == n1 + n2
    xb = (digits[120:150].reshape(30, -1) > 127).astype(np.float32)
    lw, kl = evaluate.log_weights(m, xb, 20, 10, 15, 1)
    assert lw.shape == (20, 30) and np.isfinite(lw).all() and np.isfinite(kl).all()
    st = evaluate.posterior_stats(m, xb)
    n1, n2 = direct_active_units(m, xb)
    assert (st["active_units_h1"], st["active_units_h2"], st["active_units"]) == (n1, n2, n1 + n2)
    assert evaluate.prior_log_likelihoods(m, xb, 12, 5, 15, 0).shape == (12, 30)
    assert evaluate.prior_samples_of(m, 4, 0).shape == (4, 784)
    assert evaluate.reconstructions(m, xb[:3]).shape == (3, 784)
    assert np.isfinite(evaluate.own_bound(m, xb, 0, 15))
    cfg = EvaluateConfig(k=20, n_test=30, chunk=10, batch_size=15, snr_k=(2,), snr_repeats=2,
                         elbo_draws=5, prior_k=(1, 10))
    out = evaluate.evaluate_model(m, xb, cfg)  # every measurement, SNR included
    assert np.isfinite(out["nll"])
    assert (out["active_units_h1"], out["active_units_h2"]) == (n1, n2)


def test_one_layer_model_json_keys_unchanged():
    flat = tiny_params(layers=1).models["m"].as_flat_dict()
    assert not {"model.layers", "model.h1_latent", "model.h1_hidden"} & set(flat)
    assert tiny_params().models["m"].as_flat_dict()["model.layers"] == 2


@pytest.mark.parametrize("edit,words", [
    ({"objective": "elbo_analytic", "k": 1},
     ["models.m.objective", "needs one stochastic layer (closed-form KL)", "elbo_mc"]),
    ({"layers": 9}, ["model.layers", "from 1 to 8", "got 9"]),
    ({"layers": 0}, ["model.layers", "from 1 to 8", "got 0"]),
    ({"layers": True}, ["model.layers", "from 1 to 8"]),
    ({"layers": 2.0}, ["model.layers", "from 1 to 8"]),
    ({"h1_latent": 0}, ["models.m.h1_latent", "positive integer"]),
    ({"h1_hidden": []}, ["models.m.h1_hidden", "non-empty list"]),
])
def test_config_errors(edit, words):
    entry = {"objective": "iwae", "k": 3, **edit}
    with pytest.raises(ParamsError) as e:
        tiny_params(**entry)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


@pytest.mark.parametrize("layers,entry,options", [
    (1, {"objective": "elbo_analytic", "k": 1}, {}),
    (1, {"objective": "iwae", "k": 3, "estimator": "dreg"}, {"estimator": "dreg"}),
    (2, {"objective": "elbo_mc", "k": 1}, {}),
    (2, {"objective": "miwae", "k": 2, "m": 2}, {"m": 2, "estimator": "standard"}),
    (2, {"objective": "ciwae", "k": 2}, {"beta": 0.5, "estimator": "standard"}),
    (2, {"objective": "piwae", "k": 2, "m": 3, "estimator": "stl"}, {"m": 3, "estimator": "stl"}),
])
def test_entries_resolve_with_their_layers_and_options(layers, entry, options):
    """What each entry parses to with one or two layers: its objective, k, layers and the
    options that reach the objective function, and a model.json that round-trips through
    JSON and rebuilds the same options (what models.VAE.options reads back)."""
    run = tiny_params(layers=layers, **entry).models["m"]
    assert (run.objective, run.k, run.model.layers) == (entry["objective"], entry["k"], layers)
    assert run.options() == options
    flat = json.loads(json.dumps(run.as_flat_dict()))
    assert flat.get("model.layers", 1) == layers
    assert card.ModelCard.from_info(flat).options == options
    fn = objectives.objective(run.objective, **run.options())
    assert getattr(fn, "keywords", {}) == options


# ---------------------------------------------------------------------------------------
# three stochastic layers: the library builds any number from ModelConfig.stochastic

CFG3 = ModelConfig(latent=2, hidden=(12,), layers=3, h1_latent=4, h1_hidden=(6,))


def direct_log_w3(vae3, x, z):
    """log p(x|h1) + log p(h1|h2) + log p(h2|h3) + log p(h3) - log q(h1|x) - log q(h2|h1)
    - log q(h3|h2), in numpy from the exported networks' outputs. z: {h1, h2, h3} [k, B, d]."""
    h1, h2, h3 = (np.asarray(z[n]) for n in ("h1", "h2", "h3"))
    k, b = h1.shape[:2]
    flat = lambda a: a.reshape(k * b, -1).astype(np.float32)  # noqa: E731
    xs = flat(np.broadcast_to(x, (k, *x.shape)))
    q = [np.asarray(t, np.float64) for t in vae3.encoder([xs, flat(h1), flat(h2)])]
    p = [np.asarray(t, np.float64) for t in vae3.decoder([flat(h3), flat(h2), flat(h1)])]
    f1, f2, f3 = (flat(a).astype(np.float64) for a in (h1, h2, h3))
    logits = p[4]
    log_p = ((xs * logits - np.logaddexp(0, logits)).sum(-1) + normal_logpdf(f1, p[2], p[3])
             + normal_logpdf(f2, p[0], p[1]) + normal_logpdf(f3, 0.0, 1.0))
    log_q = (normal_logpdf(f1, q[0], q[1]) + normal_logpdf(f2, q[2], q[3])
             + normal_logpdf(f3, q[4], q[5]))
    return (log_p - log_q).reshape(k, b)


def test_three_layers_build_and_their_joint_densities_match_the_networks(x):
    keras.utils.set_random_seed(0)
    vae3 = models.VAE.build(CFG3)
    assert vae3.layers == 3 and len(vae3.encoder.inputs) == 3 and len(vae3.decoder.inputs) == 3
    assert [n.name for n in vae3.q_nets] == ["q_h1", "q_h2", "q_h3"]
    q, p = vae3.posterior(ops.convert_to_tensor(x)), vae3.prior()
    z = q.sample(K, seed=backend.seed(3, 4))
    assert {n: tuple(t.shape) for n, t in z.items()} == {"h1": (K, B, 4), "h2": (K, B, 4),
                                                         "h3": (K, B, 2)}
    lw = vae3.decode(z).log_prob(x) + p.log_prob(z) - q.log_prob(z)
    np.testing.assert_allclose(np.asarray(lw), direct_log_w3(vae3, x, z), rtol=1e-5, atol=1e-3)
    # the prior's ancestral sample reaches every layer and the decoder
    assert vae3.sample(5, backend.seed(1, 2)).shape == (5, 784)
    stds = vae3.prior_std(n=2000)
    assert [s.shape for s in stds] == [(4,), (4,), (2,)] and np.all(stds[-1] == 1.0)
    assert all(np.all(s > 0) for s in stds) and not np.allclose(stds[0], 1.0)
    assert [lc.shape for lc, _ in vae3.posterior_params(x)] == [(B, 4), (B, 4), (B, 2)]
    # n_weights counts the Bernoulli head as a Gaussian's two (an upper bound): one more
    # [hidden[0] + 1, 784] block than the networks hold
    actual = sum(int(np.prod(v.shape)) for v in vae3.variables)
    assert models.n_weights(CFG3) - actual == (CFG3.hidden[0] + 1) * 784


def test_three_layers_train_deterministically_and_improve(digits):
    run = tiny_params(layers=3, latent=2, hidden=[12], h1_latent=4, h1_hidden=[6]).models["m"]
    assert run.model == CFG3  # params.yaml accepts it, per model too
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, epochs=3))
    out = [train.train(run, digits[:120], digits[120:], progress=train.Progress(
        "m", 3, io.StringIO())) for _ in range(2)]
    for a, b in zip(out[0].encoder.get_weights() + out[0].decoder.get_weights(),
                    out[1].encoder.get_weights() + out[1].decoder.get_weights()):
        np.testing.assert_array_equal(a, b)
    h = out[0].history
    assert all(np.isfinite(e["valid_Lk"]) for e in h)
    assert h[-1]["valid_bound"] > h[0]["valid_bound"]  # training improves the bound
    assert h[-1]["valid_active_units"] == sum(h[-1][f"valid_active_units_h{i}"] for i in (1, 2, 3))
