"""The per-parameter gradient SNR (vaelab.snr): the statistic on cases with a known answer,
Rainforth et al.'s Gaussian toy problem against the theory, and the measurement on a small
Keras model. Runs on either Keras backend (the toy is float64: JAX needs JAX_ENABLE_X64=1)."""
from vaelab.quiet import silence_tf

silence_tf()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vaelab import backend, cost, models, objectives, snr  # noqa: E402
from vaelab.config import ModelConfig  # noqa: E402


def test_snr_of_draws_with_known_mean_and_std_and_dropped_zeros():
    rng = np.random.default_rng(1)
    mean = np.array([2.0, -1.0, 0.5, 0.0, 0.0])
    std = np.array([1.0, 4.0, 0.1, 1.0, 0.0])  # the last: exactly 0 in every draw
    draws = rng.normal(mean, std, (20000, 5))
    s, dropped = snr.per_parameter_snr(draws)
    assert dropped.tolist() == [False, False, False, False, True] and np.isnan(s[4])
    np.testing.assert_allclose(s[:4], np.abs(mean[:4]) / std[:4], atol=0.03)
    summary = snr.summarize(s)
    assert summary["share_dropped"] == pytest.approx(0.2)
    assert summary["share_below_1"] == pytest.approx(0.5)  # 0.25 and 0.0 of the 4 kept
    assert summary["median"] == pytest.approx(np.median(np.abs(mean[:4]) / std[:4]), abs=0.03)
    # a constant nonzero gradient: infinite SNR, kept (above 1)
    s, dropped = snr.per_parameter_snr(np.array([[1.0], [1.0], [1.0]]))
    assert np.isinf(s[0]) and not dropped[0]


def test_noise_floor_and_its_removal():
    """Zero-mean draws: |mean| / std of R draws sits at sqrt(2 / (pi R)), not at 0;
    the debiased root mean square over many parameters is near 0 (or nan)."""
    rng = np.random.default_rng(2)
    R = 100
    s, _ = snr.per_parameter_snr(rng.normal(0.0, 1.0, (R, 4000)))
    assert np.mean(s) == pytest.approx(snr.noise_floor(R), rel=0.05)
    rms = snr.rms_debiased([s], R)
    assert np.isnan(rms) or rms < 0.03
    # a true SNR of 0.05, below the floor 0.08, is recovered by the debiased mean square
    s, _ = snr.per_parameter_snr(rng.normal(0.05, 1.0, (R, 4000)))
    assert snr.rms_debiased([s], R) == pytest.approx(0.05, abs=0.015)


def test_points_average_where_defined_and_slope_of_a_power_law():
    a = np.array([1.0, np.nan, np.nan])
    b = np.array([3.0, 2.0, np.nan])
    np.testing.assert_allclose(snr.average_over_points([a, b]), [2.0, 2.0, np.nan])
    ks = [1, 10, 100, 1000]
    assert snr.fit_slope(ks, [3 * k**-0.5 for k in ks]) == pytest.approx(-0.5)
    assert np.isnan(snr.fit_slope([1, 10], [1.0, float("nan")]))


def test_rainforth_toy_slopes_match_the_theory():
    """Rainforth et al. 2018's Gaussian problem (20 dimensions, parameters at the optimum
    plus N(0, 0.01^2) noise, as in the paper), K in {1, 10, 100}, 3 points x 400 draws.

    Theory for large K: standard estimator encoder -1/2, decoder +1/2; DReG's encoder does
    not fall. Measured (this seed): decoder +0.47, DReG encoder +0.27, and for the standard
    encoder, whose SNR (< 0.08 already at K = 1) is at the noise floor of 400 draws
    (sqrt(2 / (pi 400)) = 0.04) - so its median |mean| / std cannot fall and is NOT tested -
    the debiased RMS over parameters falls with slope -0.37 (its pre-asymptotic value:
    vaelab.snr --toy shows -0.37 from K = 1 to 10 and -0.38 from 10 to 100). Tolerances:
    decoder 0.5 +- 0.15, standard encoder (debiased) in [-0.65, -0.2], DReG encoder > 0 and
    above the standard one at K = 100 by 10x."""
    r = snr.Toy().snr(ks=(1, 10, 100), estimators=("standard", "dreg"), points=3, repeats=400)
    std, dreg = r["standard"], r["dreg"]
    assert 0.35 <= std["decoder"]["slope"] <= 0.65, std["decoder"]
    assert -0.65 <= std["encoder"]["slope_rms"] <= -0.2, std["encoder"]
    assert dreg["encoder"]["slope"] > 0.0, dreg["encoder"]
    assert dreg["encoder"]["k"][100]["median"] > 10 * std["encoder"]["k"][100]["median"]
    # DReG changes the encoder's estimator only: the decoder draws are the same numbers
    assert dreg["decoder"]["k"][10] == std["decoder"]["k"][10]
    # nothing dropped: every toy parameter has a gradient
    assert std["encoder"]["k"][1]["share_dropped"] == 0.0


def test_model_snr_on_a_small_keras_model():
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(latent=4, hidden=(8,))
    m = models.VAE(models.build_encoder(cfg), models.build_decoder(cfg), "bernoulli")
    x = (np.random.default_rng(0).random((3, 784)) < 0.3).astype(np.float32)
    x[:, :100] = 0.0  # pixels off in every digit: their first-layer encoder weights are 0/0
    out = snr.model_snr(m, x, (1, 5), ("standard", "stl"), digits=2, repeats=4, seed=0)
    flat = snr.flat_metrics(out["result"])
    for e in ("standard", "stl"):
        for g in ("encoder", "decoder"):
            assert f"snr_{e}_{g}_k5_median" in flat and f"snr_{e}_{g}_slope" in flat
    # 100 pixels x 8 hidden units of the encoder's first layer, at least, are dropped
    n_enc = sum(int(np.prod(v.shape)) for v in m.encoder.trainable_variables)
    assert flat["snr_standard_encoder_k1_share_dropped"] >= 800 / n_enc
    assert flat["snr_standard_decoder_k1_share_dropped"] < 0.5
    # STL changes the encoder's gradient only
    assert flat["snr_stl_decoder_k5_median"] == flat["snr_standard_decoder_k5_median"]


def test_model_draws_are_fresh_gradients_of_the_iwae_loss():
    """What model_snr's statistics are of: per repeat, a gradient of -IWAE-k on one digit
    with samples of its own, a pure function of the seed. Against the maths: the gradient
    of -log (1/k) sum_i p(x|z_i) ... with respect to the decoder's output bias b_j is
    sum_i w~_i (sigmoid(l_ij) - x_j), so every draw lies in (0, 1) where x_j = 0 and in
    (-1, 0) where x_j = 1 (a wrong sign, target or variable order breaks it)."""
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(latent=4, hidden=(8,))
    m = models.VAE(models.build_encoder(cfg), models.build_decoder(cfg), "bernoulli")
    x = (np.random.default_rng(3).random((2, 784)) < 0.3).astype(np.float32)
    draws = snr.model_draws(m, x, repeats=6, seed=0)
    a, b = draws(1, 5, "standard", 11), draws(1, 5, "standard", 11)
    for g in snr.GROUPS:
        np.testing.assert_array_equal(a[g], b[g])  # the same seed, the same draws
        assert a[g].shape == (6, sum(int(np.prod(v.shape)) for v in
                                     getattr(m, g).trainable_variables))
        # every repeat draws other samples: no two rows equal
        assert len({r.tobytes() for r in a[g]}) == 6, g
    other = draws(1, 5, "standard", 12)["decoder"]
    assert not np.array_equal(other, a["decoder"])
    assert [v.path for v in m.decoder.trainable_variables][-1].endswith("logits/bias")
    bias = a["decoder"][:, -784:]  # [repeats, 784]: the output bias comes last
    on = x[1] == 1
    assert np.all((bias[:, on] < 0) & (bias[:, on] > -1))
    assert np.all((bias[:, ~on] > 0) & (bias[:, ~on] < 1))


def test_vectorized_draws_are_the_gradients_each_seed_gives_alone(monkeypatch):
    """model_draws maps one draw over the repeats' seeds in one call (backend.map_rows). Row
    r must be the gradient that draw r's seed gives alone, computed here eagerly, one seed
    at a time, with no vectorization; and splitting the draws into blocks (a small
    cost.SNR_SAMPLES_PER_CALL: two draws a call, the last call padded) must give the same rows.
    Equal up to float32 rounding: batched matmuls sum in another order, and on JAX the
    compiled call fuses what eager runs op by op: log-weights near -500 at random weights
    carry about 3e-5 of rounding into the normalized weights (measured on JAX: 6e-5 at most,
    against entries up to 1.9). Hence a tolerance on the scale of the whole gradient;
    another seed moves every row by O(1) of it."""
    from keras import ops
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(latent=4, hidden=(8,))
    m = models.VAE(models.build_encoder(cfg), models.build_decoder(cfg), "bernoulli")
    x = (np.random.default_rng(3).random((2, 784)) < 0.3).astype(np.float32)
    repeats, k, seed, s0 = 5, 4, 3, 7
    got = snr.model_draws(m, x, repeats=repeats, seed=seed)(1, k, "dreg", s0)
    xb = ops.convert_to_tensor(x[1:2])
    f = objectives.objective("iwae", estimator="dreg")
    for g in snr.GROUPS:
        vs = getattr(m, g).trainable_variables
        for r in range(repeats):
            def loss():
                b = f(xb, m.posterior(xb), m.prior(), m.decode, k, backend.seed(seed + s0, r))
                return -ops.mean(objectives.group_targets(b)[g])
            _, gs = backend.value_and_grad(loss, vs)()
            alone = np.concatenate([np.zeros(int(np.prod(v.shape))) if t is None
                                    else np.asarray(t).ravel() for t, v in zip(gs, vs)])
            np.testing.assert_allclose(got[g][r], alone, rtol=1e-3,
                                       atol=1e-3 * np.abs(alone).max(), err_msg=g)
    monkeypatch.setattr(cost, "SNR_SAMPLES_PER_CALL", 2 * k)
    assert cost.snr_blocks(repeats, k) == (3, 2)
    blocks = snr.model_draws(m, x, repeats=repeats, seed=seed)(1, k, "dreg", s0)
    for g in snr.GROUPS:
        assert blocks[g].shape == got[g].shape
        np.testing.assert_allclose(blocks[g], got[g], rtol=1e-3,
                                   atol=1e-3 * np.abs(got[g]).max(), err_msg=g)


@pytest.mark.parametrize("repeats", [1, 7, 60, 61, 1000])
@pytest.mark.parametrize("k", [1, 5, 499, 500, 501, 5000, 30_000, 70_000])
def test_snr_blocks_cover_every_draw_within_the_memory_bound(repeats, k):
    """The split that the SNR runs and the check stage prices: every draw in some call, no
    call wholly padding, equal blocks, and at most SNR_SAMPLES_PER_CALL samples a call
    unless one draw alone is more (then one draw a call)."""
    calls, n = cost.snr_blocks(repeats, k)
    assert calls * n >= repeats > (calls - 1) * n
    assert n * k <= max(cost.SNR_SAMPLES_PER_CALL, k)
    if repeats * k <= cost.SNR_SAMPLES_PER_CALL:
        assert (calls, n) == (1, repeats)
