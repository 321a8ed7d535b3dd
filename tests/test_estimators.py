"""The tighter-bound objectives (MIWAE, CIWAE, PIWAE) and the encoder gradient estimators
(STL, DReG) checked against identities and against the standard estimator's expectation.

On the linear-Gaussian model of tests/test_objectives.py (z ~ N(0, 1), x | z ~ N(a z + b,
s^2)), whose exact posterior is known: there every log-weight equals log p(x), so the path
derivative d log w / dz is zero and STL's and DReG's encoder gradients vanish draw by draw.
Gradients are taken with respect to q's loc and log-scale (the "encoder") and the decoder's
a, b, as Keras variables; float64 throughout. Runs on either Keras backend.
"""
from vaelab.quiet import silence_tf

silence_tf()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import ops  # noqa: E402
from test_objectives import A, B, S, lg_data, lg_posterior  # noqa: E402

from vaelab import backend, objectives  # noqa: E402
from vaelab.backend import tfd  # noqa: E402
from vaelab.objectives import (ciwae, iwae, iwae_from_log_weights, miwae,  # noqa: E402
                               piwae, posterior_log_weights, vae_k)

F64 = "float64"


def T(x):
    return ops.convert_to_tensor(np.asarray(x, np.float64))


class LG:
    """Encoder (loc, log-scale per digit) and decoder (a, b) of the linear-Gaussian model as
    Keras variables, so gradients of any objective are taken as in training."""

    def __init__(self, loc, log_scale, a=A, b=B):
        self.loc = keras.Variable(np.asarray(loc, np.float64)[:, None], dtype=F64)  # [N, 1]
        self.log_scale = keras.Variable(np.asarray(log_scale, np.float64)[:, None], dtype=F64)
        self.a = keras.Variable(np.asarray(a, np.float64), dtype=F64)  # [D]
        self.b = keras.Variable(np.asarray(b, np.float64), dtype=F64)
        self.encoder, self.decoder = [self.loc, self.log_scale], [self.a, self.b]

    def q(self, reps=1):
        """q(z|x) for `reps` copies of the digits: batch [reps * N], event [1]."""
        loc, scale = self.loc, ops.exp(self.log_scale)
        if reps > 1:
            loc, scale = ops.tile(loc, (reps, 1)), ops.tile(scale, (reps, 1))
        return tfd.Independent(tfd.Normal(loc, scale), 1)

    def decode(self, z):
        return tfd.Independent(tfd.Normal(z * self.a + self.b, T(S)), 1)

    def prior(self):
        return tfd.Independent(tfd.Normal(ops.zeros([1], F64), ops.ones([1], F64)), 1)

    def grads(self, fn, x, k, seed, reps=1, **options):
        """Encoder and decoder gradients (of what each group ascends) of the mean over
        `reps` copies of x: the average of `reps` independent gradient draws per digit."""
        f = objectives.objective(fn, **options)
        xt = T(np.tile(x, (reps, 1)))

        def targets():
            b = f(xt, self.q(reps), self.prior(), self.decode, k, seed)
            losses = objectives.surrogate_losses(b)
            if losses is None:
                loss = -ops.mean(b.bound)
                losses = {"encoder": loss, "decoder": loss}
            return losses

        out = {}
        for group, vs in (("encoder", self.encoder), ("decoder", self.decoder)):
            _, g = backend.value_and_grad(lambda: targets()[group], vs)()
            out[group] = np.concatenate([np.asarray(t).ravel() for t in g])
        return out


def _x(n=2, seed=0):
    return lg_data(n, np.random.default_rng(seed))


# --------------------------------------------------------------------------------------
# 1. identities on the same samples

@pytest.mark.parametrize("k", [1, 5])
def test_miwae_one_group_is_iwae(k):
    x = _x(3)
    m = LG(*[np.zeros(3), np.full(3, -0.5)])
    a = miwae(T(x), m.q(), m.prior(), m.decode, k, backend.seed(1), m=1).bound
    b = iwae(T(x), m.q(), m.prior(), m.decode, k, backend.seed(1)).bound
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_miwae_is_the_mean_of_m_iwae_bounds_of_disjoint_groups():
    x, mm, k = _x(3), 4, 5
    m = LG(np.zeros(3), np.full(3, -0.5))
    got = np.asarray(miwae(T(x), m.q(), m.prior(), m.decode, k, backend.seed(2), m=mm).bound)
    lp, lz, lq = posterior_log_weights(T(x), m.q(), m.prior(), m.decode, mm * k, backend.seed(2))
    log_w = np.asarray(lp + lz - lq).reshape(mm, k, -1)  # [m, k, N], groups of consecutive draws
    want = np.mean([np.asarray(iwae_from_log_weights(T(g))) for g in log_w], axis=0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # and it sits between the ELBO and IWAE-(m k) on the same m k samples
    assert np.all(got <= np.asarray(iwae_from_log_weights(T(log_w.reshape(mm * k, -1)))) + 1e-12)
    assert np.all(got >= log_w.reshape(mm * k, -1).mean(0) - 1e-12)


def test_ciwae_ends_are_elbo_and_iwae():
    x, k = _x(3), 6
    m = LG(np.zeros(3), np.full(3, -0.5))
    args = (T(x), m.q(), m.prior(), m.decode, k, backend.seed(3))
    np.testing.assert_allclose(np.asarray(ciwae(*args, beta=1.0).bound),
                               np.asarray(vae_k(*args).bound), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(ciwae(*args, beta=0.0).bound),
                               np.asarray(iwae(*args).bound), rtol=0, atol=1e-12)
    mid = np.asarray(ciwae(*args, beta=0.25).bound)
    want = 0.25 * np.asarray(vae_k(*args).bound) + 0.75 * np.asarray(iwae(*args).bound)
    np.testing.assert_allclose(mid, want, rtol=0, atol=1e-12)


def test_piwae_reports_iwae_mk_and_trains_each_network_on_its_own_bound():
    """Decoder: the gradient of IWAE-(m k); encoder: of MIWAE(m, k), same samples."""
    x, mm, k = _x(2), 3, 4
    m = LG(np.array([0.3, -0.2]), np.array([-0.4, -0.9]))
    s = backend.seed(4)
    b = piwae(T(x), m.q(), m.prior(), m.decode, k, s, m=mm).bound
    np.testing.assert_allclose(np.asarray(b), np.asarray(
        iwae(T(x), m.q(), m.prior(), m.decode, mm * k, s).bound), rtol=0, atol=1e-12)
    p = m.grads("piwae", x, k, s, m=mm)
    np.testing.assert_allclose(p["decoder"], m.grads("iwae", x, mm * k, s)["decoder"],
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(p["encoder"], m.grads("miwae", x, k, s, m=mm)["encoder"],
                               rtol=1e-10, atol=1e-12)
    assert np.abs(p["encoder"] - m.grads("iwae", x, mm * k, s)["encoder"]).max() > 1e-6


@pytest.mark.parametrize("estimator", ["stl", "dreg"])
@pytest.mark.parametrize("fn,opts", [("iwae", {}), ("miwae", {"m": 2}), ("ciwae", {"beta": 0.3}),
                                     ("piwae", {"m": 2})])
def test_estimators_leave_the_bound_and_the_decoder_gradient_alone(estimator, fn, opts):
    x, k = _x(2), 5
    m = LG(np.array([0.3, -0.2]), np.array([-0.4, -0.9]))
    s = backend.seed(5)
    args = (T(x), m.q(), m.prior(), m.decode, k, s)
    f_std, f_est = (objectives.objective(fn, estimator=e, **opts) for e in ("standard", estimator))
    np.testing.assert_array_equal(np.asarray(f_std(*args).bound), np.asarray(f_est(*args).bound))
    g_std, g_est = m.grads(fn, x, k, s, **opts), m.grads(fn, x, k, s, estimator=estimator, **opts)
    np.testing.assert_allclose(g_est["decoder"], g_std["decoder"], rtol=1e-10, atol=1e-12)
    # the encoder's estimate really is another one, draw by draw
    assert np.abs(g_est["encoder"] - g_std["encoder"]).max() > 1e-6


# --------------------------------------------------------------------------------------
# 2. expectations, over many draws

def _draws(model, fn, x, k, estimator, chunks=20, reps=2000, **opts):
    """[chunks, n_params] encoder-gradient means, each over `reps` independent draws."""
    return np.stack([model.grads(fn, x, k, backend.seed(100 + c), reps=reps,
                                 estimator=estimator, **opts)["encoder"] for c in range(chunks)])


def _same_mean(a, b, z=4.0):
    """Per parameter: |mean a - mean b| < z standard errors of the difference."""
    diff = a.mean(0) - b.mean(0)
    se = np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
    return np.abs(diff) < z * se, diff, se


def test_dreg_encoder_gradient_has_the_standard_expectation():
    """Tucker et al. 2018: DReG is unbiased for the IWAE bound's encoder gradient, for any q."""
    x, k = _x(1, 7), 5
    m = LG(np.array([0.4]), np.array([-0.3]))  # far from the posterior: a real gradient
    std, dreg = _draws(m, "iwae", x, k, "standard"), _draws(m, "iwae", x, k, "dreg")
    ok, diff, se = _same_mean(dreg, std)
    assert ok.all(), (diff, se)
    # the check has power: the gradient is many standard errors away from zero
    assert np.all(np.abs(std.mean(0)) > 10 * se), (std.mean(0), se)
    # and DReG is the lower-variance estimator (the paper's point)
    assert np.all(dreg.var(0) < std.var(0))


def test_dreg_for_miwae_has_the_standard_expectation():
    x, k = _x(1, 8), 3
    m = LG(np.array([-0.5]), np.array([-0.2]))
    std = _draws(m, "miwae", x, k, "standard", m=2)
    dreg = _draws(m, "miwae", x, k, "dreg", m=2)
    ok, diff, se = _same_mean(dreg, std)
    assert ok.all(), (diff, se)
    assert np.all(np.abs(std.mean(0)) > 10 * se)


@pytest.mark.parametrize("fn,k", [("elbo_mc", 1), ("iwae", 5)])
def test_stl_at_the_exact_posterior_is_zero_draw_by_draw(fn, k):
    """Roeder et al. 2017: with q the exact posterior, log w is constant in z, so the path
    derivative vanishes: STL's (and DReG's) encoder gradient is 0 for every draw, the
    standard estimator's only in expectation (it is noise around 0)."""
    x = _x(2, 9)
    mean, sd = lg_posterior(x)
    m = LG(mean, np.log(sd))
    s = backend.seed(6)
    for estimator in ("stl", "dreg") if fn == "iwae" else ():
        g = m.grads(fn, x, k, s, estimator=estimator)["encoder"]
        np.testing.assert_allclose(g, 0.0, rtol=0, atol=1e-10)
    std = np.stack([m.grads(fn, x, k, backend.seed(200 + c), reps=500)["encoder"]
                    for c in range(20)])  # [20, params], each a mean of 500 draws
    assert np.all(std.std(0) > 1e-3)  # the standard estimator is noisy...
    se = std.std(0, ddof=1) / np.sqrt(len(std))
    assert np.all(np.abs(std.mean(0)) < 4 * se)  # ...around the same zero


def test_stl_elbo_encoder_gradient_has_the_standard_expectation():
    """For the ELBO (k = 1) STL drops a term whose expectation is zero for any q: unbiased.
    (For k > 1 it is not: Tucker et al. 2018 show STL-IWAE is biased, which is why DReG.)"""
    x = _x(1, 10)
    m = LG(np.array([0.4]), np.array([-0.3]))
    std = np.stack([m.grads("iwae", x, 1, backend.seed(300 + c), reps=2000)["encoder"]
                    for c in range(20)])
    stl = np.stack([m.grads("iwae", x, 1, backend.seed(300 + c), reps=2000,
                            estimator="stl")["encoder"] for c in range(20)])
    ok, diff, se = _same_mean(stl, std)
    assert ok.all(), (diff, se)
    assert np.all(np.abs(std.mean(0)) > 10 * se)
