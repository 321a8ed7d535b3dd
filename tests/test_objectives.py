"""vaelab.objectives checked against mathematics, not against itself.

Two models whose log p(x) is known without any estimator:
  * linear-Gaussian: z ~ N(0, 1), x | z ~ N(a z + b, diag(s^2)), so x ~ N(b, a a^T + diag(s^2))
    and the exact posterior is Gaussian; with q equal to it, every importance weight equals p(x);
  * a 1-D latent Bernoulli model whose log p(x) is a one-dimensional integral, done by quadrature.
Everything that needs precision runs in float64 (on JAX, with JAX_ENABLE_X64=1).
Written once for both Keras backends (KERAS_BACKEND): tests/test_backends.py runs this file
on JAX too.
"""
from vaelab.quiet import silence_tf

silence_tf()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import ops  # noqa: E402
from scipy.special import logsumexp  # noqa: E402

from vaelab import backend, models  # noqa: E402
from vaelab.backend import tfd  # noqa: E402
from vaelab.config import ModelConfig  # noqa: E402
from vaelab.objectives import (elbo_analytic, elbo_from_log_weights, elbo_mc,  # noqa: E402
                               iwae, iwae_from_log_weights,
                               posterior_log_weights, prior_mc, vae_k)

F64 = "float64"


def T(x, dtype=None):
    """A backend tensor of x, keeping a numpy array's dtype (float64 here)."""
    return ops.convert_to_tensor(np.asarray(x), dtype)


def seed(a, b=0):
    return backend.seed(a, b)


# --------------------------------------------------------------------------------------
# the linear-Gaussian model, in closed form

A = np.array([1.5, -0.7, 2.0])  # x_d = a_d z + b_d + s_d * noise
B = np.array([0.3, -1.0, 0.5])
S = np.array([0.5, 0.8, 1.0])
D = len(A)


def lg_log_px(x):
    """log N(x; b, a a^T + diag(s^2)) for x [N, D], by numpy linear algebra."""
    cov = np.outer(A, A) + np.diag(S**2)
    r = x - B
    _, logdet = np.linalg.slogdet(cov)
    maha = np.einsum("nd,de,ne->n", r, np.linalg.inv(cov), r)
    return -0.5 * (D * np.log(2 * np.pi) + logdet + maha)


def lg_posterior(x):
    """Exact p(z|x) = N(mean, var) for x [N, D]: returns mean, sd, each [N]."""
    var = 1.0 / (1.0 + np.sum(A**2 / S**2))
    mean = var * np.sum(A * (x - B) / S**2, axis=1)
    return mean, np.full_like(mean, np.sqrt(var))


def lg_decode(z):
    """z [..., 1] -> N(a z + b, s^2) per pixel, batch [...], event [D]."""
    return tfd.Independent(tfd.Normal(z * T(A) + T(B), T(S)), 1)


def normal_q(mean, sd):
    """q(z|x) with batch [N], event [1] from mean, sd [N]."""
    return tfd.Independent(tfd.Normal(T(mean[:, None], F64),
                                      T(sd[:, None], F64)), 1)


def std_prior(latent=1):
    return tfd.Independent(tfd.Normal(ops.zeros([latent], F64), ops.ones([latent], F64)), 1)


def lg_data(n, rng):
    z = rng.standard_normal(n)
    return z[:, None] * A + B + S * rng.standard_normal((n, D))


@pytest.fixture(scope="module")
def lg():
    x = lg_data(4, np.random.default_rng(0))
    return x, lg_log_px(x)


def test_closed_form_reference_is_right():
    """The test's own log p(x) and posterior: Bayes' rule p(x) = p(z) p(x|z) / p(z|x) at any z."""
    x = lg_data(3, np.random.default_rng(1))
    mean, sd = lg_posterior(x)
    for z in (-1.3, 0.0, 0.7):
        log_joint = (-0.5 * z**2 - 0.5 * np.log(2 * np.pi)
                     + np.sum(-0.5 * ((x - A * z - B) / S) ** 2 - np.log(S) - 0.5 * np.log(2 * np.pi), 1))
        log_post = -0.5 * ((z - mean) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)
        np.testing.assert_allclose(log_joint - log_post, lg_log_px(x), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------
# 1. the exact posterior makes every weight equal p(x)

def test_exact_posterior_every_log_weight_is_log_px(lg):
    x, log_px = lg
    q = normal_q(*lg_posterior(x))
    log_px_z, log_pz, log_qz = posterior_log_weights(T(x), q, std_prior(), lg_decode, 64, seed(3))
    log_w = np.asarray((log_px_z + log_pz - log_qz))
    assert log_w.shape == (64, len(x))
    assert np.ptp(np.asarray(log_px_z), axis=0).min() > 0.1  # the samples really differ...
    # ...the weights don't
    np.testing.assert_allclose(log_w, np.broadcast_to(log_px, log_w.shape), rtol=0, atol=1e-9)


@pytest.mark.parametrize("objective,k", [(elbo_mc, 1), (vae_k, 1), (vae_k, 7),
                                         (iwae, 1), (iwae, 5), (iwae, 50)])
def test_exact_posterior_bounds_are_log_px(lg, objective, k):
    x, log_px = lg
    q = normal_q(*lg_posterior(x))
    bound = objective(T(x), q, std_prior(), lg_decode, k, seed(5, k)).bound
    assert bound.shape == (len(x),)
    np.testing.assert_allclose(np.asarray(bound), log_px, rtol=0, atol=1e-9)


def test_exact_posterior_elbo_analytic_is_log_px_in_expectation(lg):
    """Eq. (4) uses one sample for E log p(x|z) and the exact KL: log p(x) on average only."""
    x, log_px = lg
    reps = 4000
    mean, sd = lg_posterior(x)
    xt = np.tile(x, (reps, 1))  # each copy gets its own sample: reps independent draws
    q = normal_q(np.tile(mean, reps), np.tile(sd, reps))
    bound = elbo_analytic(T(xt), q, std_prior(), lg_decode, 1, seed(7)).bound
    b = np.asarray(bound).reshape(reps, len(x))
    spread = b.std(axis=0, ddof=1)
    assert spread.min() > 0.05  # one sample is noisy: not equal to log p(x) draw by draw
    err = np.abs(b.mean(axis=0) - log_px)
    assert np.all(err < 4.5 * spread / np.sqrt(reps)), (err, spread / np.sqrt(reps))


# --------------------------------------------------------------------------------------
# 2. a wrong q: IWAE_k is a lower bound that tightens with k

def test_wrong_q_iwae_lower_bound_tightens_with_k(lg):
    x, log_px = lg
    reps = 2000
    mean, sd = lg_posterior(x)
    # shifted by three posterior sds and 1.5 times as wide: poor, but the weights stay bounded
    q = normal_q(np.tile(mean + 3.0 * sd, reps), np.tile(1.5 * sd, reps))
    xt = T(np.tile(x, (reps, 1)))
    means, ses = [], []
    for k in (1, 5, 50, 500):
        b = np.asarray(iwae(xt, q, std_prior(), lg_decode, k, seed(11, k)).bound).reshape(reps, len(x))
        means.append(b.mean(0))
        ses.append(b.std(0, ddof=1) / np.sqrt(reps))
    means, ses = np.array(means), np.array(ses)  # [4 k's, N]
    # a lower bound in expectation
    assert np.all(means < log_px + 3 * ses), (means - log_px, ses)
    # strictly increasing in k, by more than the noise
    step = np.diff(means, axis=0)
    noise = np.sqrt(ses[1:] ** 2 + ses[:-1] ** 2)
    assert np.all(step > 3 * noise), (step, noise)
    # and it closes the gap: k=500 is far tighter than k=1
    gap = log_px - means
    assert gap[0].min() > 1.0
    assert np.all(np.abs(gap[-1]) < 0.02 * gap[0]), gap


# --------------------------------------------------------------------------------------
# 3. IWAE vs the ELBO on the same log-weights

def test_iwae_k1_is_elbo_mc_on_the_same_sample(lg):
    x, _ = lg
    mean, sd = lg_posterior(x)
    q = normal_q(mean - 0.5, 1.7 * sd)  # not the posterior: the bound varies with the sample
    args = (T(x), q, std_prior(), lg_decode, 1)
    a = np.asarray(iwae(*args, seed(13)).bound)
    b = np.asarray(elbo_mc(*args, seed(13)).bound)
    other = np.asarray(elbo_mc(*args, seed(14)).bound)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    assert np.abs(a - other).min() > 1e-3  # a different seed really is a different sample


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_iwae_from_log_weights_dominates_elbo_and_is_stable(scale):
    rng = np.random.default_rng(int(scale))
    for k in (1, 2, 10, 300):
        log_w = -scale * rng.random((k, 50)) - (scale if scale > 1 else 0) * rng.random((1, 50))
        iw = np.asarray(iwae_from_log_weights(T(log_w)))
        el = np.asarray(elbo_from_log_weights(T(log_w)))
        assert np.all(np.isfinite(iw)) and np.all(np.isfinite(el))
        assert np.all(iw >= el - 1e-9 * scale)
        assert np.all(iw <= log_w.max(0) + 1e-9 * scale)
        np.testing.assert_allclose(iw, logsumexp(log_w, axis=0) - np.log(k), rtol=1e-12)
        np.testing.assert_allclose(el, log_w.mean(0), rtol=1e-12)
        if k > 1:
            assert np.all(iw > el)  # strict Jensen when the weights differ


def test_iwae_from_log_weights_never_exponentiates():
    # exp(-1e4) and exp(800) are 0 and inf in float64: a naive log(mean(exp)) gives -inf / inf
    for c in (-1e4, 800.0):
        log_w = T(np.full((20, 3), c))
        np.testing.assert_allclose(np.asarray(iwae_from_log_weights(log_w)), c, rtol=1e-14)
    # float32 too (k is cast to the weights' dtype)
    out = iwae_from_log_weights(T([[-1e4], [-1e4 - 1]], "float32"))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_allclose(np.asarray(out), [np.logaddexp(-1e4, -1e4 - 1) - np.log(2)], rtol=1e-6)


# --------------------------------------------------------------------------------------
# 4. analytic KL vs its Monte Carlo estimate

def test_analytic_kl_matches_monte_carlo_rate():
    rng = np.random.default_rng(4)
    latent, n_x = 3, 4
    q = tfd.Independent(tfd.Normal(T(rng.normal(0, 1.0, (n_x, latent))),
                                   T(rng.uniform(0.3, 1.5, (n_x, latent)))), 1)
    p_z = std_prior(latent)
    decode = lambda z: tfd.Independent(tfd.Normal(z, T(1.0, F64)), 1)  # noqa: E731
    x = T(rng.normal(size=(n_x, latent)))
    kl = np.asarray(elbo_analytic(x, q, p_z, decode, 1, seed(0)).terms["rate"])
    # the test's own closed form, so the analytic term is checked too
    loc, sc = np.asarray(q.distribution.loc), np.asarray(q.distribution.scale)
    np.testing.assert_allclose(kl, np.sum(0.5 * (sc**2 + loc**2 - 1) - np.log(sc), 1), rtol=1e-12)
    errors, tols = {}, {}
    for n in (100, 10_000):
        errors[n], tols[n] = [], []
        for s in range(3):
            rate = np.asarray(elbo_mc(x, q, p_z, decode, n, seed(20 + s, n)).terms["rate"])
            _, log_pz, log_qz = posterior_log_weights(x, q, p_z, decode, n, seed(20 + s, n))
            per_sample = np.asarray((log_qz - log_pz))
            np.testing.assert_allclose(rate, per_sample.mean(0), rtol=1e-12)  # same seed, same z
            tol = 4 * per_sample.std(0, ddof=1) / np.sqrt(n)
            assert np.all(np.abs(rate - kl) < tol), (n, rate - kl, tol)
            errors[n].append(np.abs(rate - kl))
            tols[n].append(tol)
    assert np.mean(errors[10_000]) < np.mean(errors[100])
    assert np.max(tols[10_000]) < np.min(tols[100])


# --------------------------------------------------------------------------------------
# 5. gradients reach the encoder through the reparameterized sample (eq. 12)

@pytest.fixture(scope="module")
def tiny_f64_vae():
    # Keras caches its global dtype policy from floatx on first use, so both are set and
    # both restored: later tests must get float32 networks again.
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        keras.utils.set_random_seed(0)
        cfg = ModelConfig(latent=2, hidden=(3,), activation="tanh")
        enc, dec = models.build_encoder(cfg), models.build_decoder(cfg)
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)
    assert all(v.dtype == "float64" for v in enc.weights + dec.weights)
    x = T((np.random.default_rng(0).random((4, 784)) < 0.3).astype(np.float64))
    return enc, dec, x


@pytest.mark.parametrize("objective,k", [(elbo_analytic, 1), (iwae, 5)])
def test_encoder_gradients_match_finite_differences(tiny_f64_vae, objective, k):
    enc, dec, x = tiny_f64_vae
    decode = models.make_decode(dec, "bernoulli")
    p_z = std_prior(2)

    def loss():
        return -backend.mean(objective(x, models.posterior(enc, x), p_z, decode, k, seed(42)).bound)

    value, grads = backend.value_and_grad(loss, enc.trainable_variables)()
    assert len(grads) == 6
    for v, g in zip(enc.trainable_variables, grads):
        assert g is not None, v.path
        assert np.linalg.norm(np.asarray(g)) > 1e-8, v.path
    np.testing.assert_allclose(np.asarray(loss()), np.asarray(value), rtol=0, atol=0)  # seed => same eps

    # Keras' tanh on JAX is accurate to ~6e-8 in float64 (jnp.tanh to 1e-16), which at
    # h = 1e-5 is ~1e-2 of noise in the difference quotient: a wider step and a looser
    # tolerance there; TF keeps the tight check.
    h, rtol, atol = (1e-3, 1e-3, 1e-5) if backend.NAME == "jax" else (1e-5, 1e-5, 1e-9)
    rng = np.random.default_rng(1)
    for v, g in zip(enc.trainable_variables, grads):
        g = np.asarray(g).ravel()
        # the largest component and one at random (which may be exactly zero: an off pixel)
        for i in {int(np.argmax(np.abs(g))), int(rng.integers(g.size))}:
            w0 = np.asarray(v)
            bumped = w0.ravel().copy()
            bumped[i] += h
            v.assign(bumped.reshape(w0.shape))
            up = np.asarray(loss())
            bumped[i] -= 2 * h
            v.assign(bumped.reshape(w0.shape))
            down = np.asarray(loss())
            v.assign(w0)
            fd = (up - down) / (2 * h)
            np.testing.assert_allclose(g[i], fd, rtol=rtol, atol=atol, err_msg=f"{v.path}[{i}]")


def test_prior_mc_gives_the_encoder_no_gradient(tiny_f64_vae):
    """The contrast to the test above: eq. (7) ignores q, so the encoder gets nothing."""
    enc, dec, x = tiny_f64_vae
    def loss():
        q = models.posterior(enc, x)
        return -backend.mean(prior_mc(x, q, std_prior(2), models.make_decode(dec, "bernoulli"),
                                  5, seed(42)).bound)

    _, grads = backend.value_and_grad(loss, enc.trainable_variables + dec.trainable_variables)()
    n_enc = len(enc.trainable_variables)
    # TF: no gradient at all (None); JAX: zeros
    assert all(g is None or not np.any(np.asarray(g)) for g in grads[:n_enc])
    assert all(g is not None and np.any(np.asarray(g)) for g in grads[n_enc:])


# --------------------------------------------------------------------------------------
# 6. prior_mc and IWAE against numerical integration

W = np.array([2.5, -2.0, 3.0])  # p(x_d = 1 | z) = sigmoid(w_d z + c_d)
C = np.array([0.5, -0.3, 0.0])
X_BIN = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=np.float64)


def bern_decode(z):
    """z [..., 1] -> D=3 independent Bernoulli pixels, batch [...], event [3]."""
    return tfd.Independent(tfd.Bernoulli(logits=z * T(W) + T(C), dtype=F64), 1)


def bern_log_joint(z, x):
    """log p(z) + log p(x|z) on a grid z [G] for x [N, 3] -> [N, G], in numpy."""
    logits = z[None, :, None] * W + C  # [1, G, 3]
    log_lik = np.sum(x[:, None, :] * logits - np.logaddexp(0, logits), axis=-1)
    return log_lik - 0.5 * z**2 - 0.5 * np.log(2 * np.pi)


@pytest.fixture(scope="module")
def bern_truth():
    z = np.linspace(-10, 10, 40_001)
    lj = bern_log_joint(z, X_BIN)
    log_px = np.log(np.trapezoid(np.exp(lj), z, axis=1))
    # Gauss-Hermite as an independent second quadrature: int f(z) N(z) dz
    nodes, weights = np.polynomial.hermite_e.hermegauss(150)
    lik = np.exp(bern_log_joint(nodes, X_BIN) + 0.5 * nodes**2 + 0.5 * np.log(2 * np.pi))
    np.testing.assert_allclose(log_px, np.log(lik @ weights / np.sqrt(2 * np.pi)), rtol=0, atol=1e-9)
    post = np.exp(lj - log_px[:, None])
    mean = np.trapezoid(post * z, z, axis=1)
    sd = np.sqrt(np.trapezoid(post * (z - mean[:, None]) ** 2, z, axis=1))
    return log_px, mean, sd


def test_prior_mc_approaches_quadrature_log_px(bern_truth):
    log_px = bern_truth[0]
    x = T(X_BIN)
    errs, ses = [], []
    for k, reps in ((10, 4000), (1000, 400), (100_000, 40)):
        bound = backend.compile(lambda s: prior_mc(x, None, std_prior(), bern_decode, k, s).bound, [])  # noqa: B023
        b = np.stack([np.asarray(bound(seed(r, k))) for r in range(reps)])  # [reps, N]
        assert np.all(np.isfinite(b))
        errs.append(b.mean(0) - log_px)
        ses.append(b.std(0, ddof=1) / np.sqrt(reps))
    errs, ses = np.array(errs), np.array(ses)  # [3 k's, N]
    # biased low at small k (Jensen: E log <= log E), well beyond the noise
    assert np.all(errs[0] < -3 * ses[0]), (errs[0], ses[0])
    # the error shrinks as k grows ...
    rms = np.sqrt(np.mean(errs**2, axis=1))
    assert rms[1] < rms[0] and rms[2] < rms[1], rms
    # ... and at k = 100,000 it is within noise of the truth, and the noise is small
    assert np.all(np.abs(errs[2]) < 4 * ses[2] + 1e-4), (errs[2], ses[2])
    assert np.all(ses[2] < 2e-3), ses[2]


def test_iwae_with_a_gaussian_q_approaches_quadrature_log_px(bern_truth):
    log_px, mean, sd = bern_truth
    out = {}
    for k, reps in ((1, 4000), (1000, 300)):
        q = normal_q(np.tile(mean, reps), np.tile(1.3 * sd, reps))  # moment-matched, a bit wide
        x = T(np.tile(X_BIN, (reps, 1)))
        b = np.asarray(iwae(x, q, std_prior(), bern_decode, k, seed(7, k)).bound).reshape(reps, -1)
        out[k] = (b.mean(0), b.std(0, ddof=1) / np.sqrt(reps))
    m1, se1 = out[1]
    mk, sek = out[1000]
    assert np.all(m1 < log_px - 3 * se1), (m1 - log_px, se1)  # k=1 is the ELBO: visibly below
    assert np.all(np.abs(mk - log_px) < 4 * sek + 1e-4), (mk - log_px, sek)
    assert np.all(np.abs(mk - log_px) < 0.1 * (log_px - m1)), (mk - log_px, m1 - log_px)


# --------------------------------------------------------------------------------------
# 8. eq. (7) shares the k prior samples across the batch

def test_prior_mc_shares_prior_samples_across_the_batch():
    x = T(np.repeat(X_BIN[:1], 2, axis=0))
    b = np.asarray(prior_mc(x, None, std_prior(), bern_decode, 5, seed(3)).bound)
    assert b[0] == b[1]
    # in contrast, IWAE draws its own samples for each example
    q = normal_q(np.zeros(2), np.ones(2))
    b = np.asarray(iwae(x, q, std_prior(), bern_decode, 5, seed(3)).bound)
    assert b[0] != b[1]
    # and prior_mc on a batch equals prior_mc on each example alone with the same seed
    batch = np.asarray(prior_mc(T(X_BIN), None, std_prior(), bern_decode, 5, seed(4)).bound)
    alone = [np.asarray(prior_mc(T(X_BIN[i:i + 1]), None, std_prior(), bern_decode, 5,
                      seed(4)).bound)[0] for i in range(len(X_BIN))]
    np.testing.assert_allclose(batch, alone, rtol=1e-14)
