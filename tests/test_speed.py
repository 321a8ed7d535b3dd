"""Speed never changes results: every fast path agrees with its plain reference.

(Speed itself is measured by `python -m vaelab.bench`, never asserted here.) XLA
(`train.jit: true`) is the one lever that does change results: TF's stateless RNG draws
other numbers inside XLA, even with the algorithm named, so a jit run draws different
(equally valid) samples. `jit: fused` lets XLA fuse only the element-wise maths: the same
draws, rounding differences only, deterministic and resumable bit for bit (README, Speed).
"""
import json
import os
import subprocess
import sys

from vaelab.quiet import silence_tf

silence_tf()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

from vaelab import evaluate, models  # noqa: E402
from vaelab.config import ModelConfig  # noqa: E402
from vaelab.objectives import iwae, posterior_log_weights  # noqa: E402

tfd = tfp.distributions


def binary(shape, seed=0):
    return (np.random.default_rng(seed).random(shape) < 0.3).astype(np.float32)


def test_fast_bernoulli_equals_tfp_bernoulli_in_value_and_gradient():
    """models.BernoulliLogits (one softplus per pixel) against tfd.Bernoulli: the same
    log-likelihood and the same gradient with respect to the logits, for bits, grey values,
    and logits large enough to saturate softplus."""
    logits = tf.concat([tf.random.stateless_normal([7, 5, 784], seed=[0, 1]),
                        30.0 * tf.random.stateless_normal([1, 5, 784], seed=[0, 2])], 0)
    for x in (tf.constant(binary((5, 784))),
              tf.constant(np.random.default_rng(1).random((5, 784)), tf.float32)):
        out = {}
        for name, cls in (("fast", models.BernoulliLogits), ("tfp", tfd.Bernoulli)):
            with tf.GradientTape() as tape:
                tape.watch(logits)
                ll = tfd.Independent(cls(logits=logits, dtype=tf.float32), 1).log_prob(x)
                # weights per example, so the gradient check sees every [k, B] entry
                loss = tf.reduce_sum(ll * tf.range(1.0, 9.0)[:, None])
            out[name] = (ll.numpy(), tape.gradient(loss, logits).numpy())
        assert out["fast"][0].shape == (8, 5)
        np.testing.assert_allclose(out["fast"][0], out["tfp"][0], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(out["fast"][1], out["tfp"][1], rtol=1e-5, atol=1e-5)


def test_training_step_with_fast_bernoulli_equals_tfp_bernoulli(monkeypatch):
    """The fast log-likelihood changes neither the loss nor the gradients of a real
    training step: the IWAE k=5 loss and every weight gradient, same inputs and seeds."""
    cfg = ModelConfig(latent=4, hidden=(32,))
    keras.utils.set_random_seed(4)
    enc, dec = models.build_encoder(cfg), models.build_decoder(cfg)
    x = tf.constant(binary((6, 784), seed=5))
    out = {}
    for name, cls in (("fast", models.BernoulliLogits), ("tfp", tfd.Bernoulli)):
        monkeypatch.setattr(models, "BernoulliLogits", cls)
        with tf.GradientTape() as tape:
            q = models.posterior(enc, x)
            loss = -tf.reduce_mean(iwae(x, q, models.prior(4), models.make_decode(dec, "bernoulli"),
                                        5, tf.constant([0, 3])).bound)
        grads = tape.gradient(loss, enc.trainable_variables + dec.trainable_variables)
        out[name] = (float(loss), [g.numpy() for g in grads])
    np.testing.assert_allclose(out["fast"][0], out["tfp"][0], rtol=1e-6)
    for g_fast, g_tfp in zip(out["fast"][1], out["tfp"][1]):
        # float32 sums over 784 pixels in another order: equal to 1e-4 of the largest entry
        np.testing.assert_allclose(g_fast, g_tfp, rtol=1e-4, atol=1e-4 * np.abs(g_tfp).max())


def test_chunked_log_weights_equal_the_objectives_log_weights():
    keras.utils.set_random_seed(2)
    cfg = ModelConfig(latent=3, hidden=(12,))
    m = models.VAE(models.build_encoder(cfg), models.build_decoder(cfg), "bernoulli")
    x = binary((6, 784), seed=3)
    chunk = 4
    fast, kl = evaluate.log_weights(m, x, k=chunk, chunk=chunk, batch_size=6, seed=5)
    p_z, decode = m.prior(), m.decode
    xb = tf.constant(x)
    q = models.posterior(m.encoder, xb)
    # evaluate.log_weights seeds batch 0, chunk 0 with [seed, 0]
    lp, lz, lq = posterior_log_weights(xb, q, p_z, decode, chunk, tf.constant([5, 0]))
    np.testing.assert_allclose(fast, (lp + lz - lq).numpy(), rtol=1e-5, atol=1e-3)
    # and L_k from them is the objective's IWAE bound on the same samples
    ref_iwae = iwae(xb, q, p_z, decode, chunk, tf.constant([5, 0])).bound.numpy()
    np.testing.assert_allclose(evaluate.l_k(fast, chunk), ref_iwae, rtol=1e-5, atol=1e-3)


def test_mixed_bfloat16_model_gives_float32_log_probs_close_to_float32(tmp_path):
    """model.precision: mixed_bfloat16 multiplies in bfloat16 but hands float32 to TFP, and
    its exported networks still load with plain keras.saving.load_model."""
    cfgs = {p: ModelConfig(latent=4, hidden=(32,), precision=p)
            for p in ("float32", "mixed_bfloat16")}
    nets = {}
    for p, cfg in cfgs.items():
        keras.utils.set_random_seed(3)  # same initial weights for both precisions
        nets[p] = (models.build_encoder(cfg), models.build_decoder(cfg))
    x = tf.constant(binary((6, 784), seed=4))
    z = tf.random.stateless_normal([3, 6, 4], seed=[0, 2])
    ll = {p: models.make_decode(dec, "bernoulli")(z).log_prob(x) for p, (_, dec) in nets.items()}
    assert ll["mixed_bfloat16"].dtype == tf.float32
    q = models.posterior(nets["mixed_bfloat16"][0], x)
    assert q.sample(2, seed=[0, 1]).dtype == tf.float32
    # bfloat16 keeps ~3 significant digits: close to, not equal to, the float32 network
    np.testing.assert_allclose(ll["mixed_bfloat16"], ll["float32"], rtol=2e-2)
    assert not np.array_equal(ll["mixed_bfloat16"].numpy(), ll["float32"].numpy())
    enc, dec = nets["mixed_bfloat16"]
    models.save(tmp_path, enc, dec, {})
    reloaded = keras.saving.load_model(tmp_path / "decoder.keras")
    np.testing.assert_array_equal(reloaded(z[0]).numpy(), dec(z[0]).numpy())


def test_xla_evaluation_computes_the_same_bound_with_other_random_numbers():
    """Why XLA (train.jit, models.VAE.jit) stays off by default, and why it is still
    correct: under XLA, TF's stateless RNG draws other samples for the same seed (so a jit
    run's numbers differ), but the compiled function is the same maths. On one tiny model:
    the analytic KL (no sampling) agrees to float precision, the log-weights are other draws,
    and the per-digit mean log-weight (the ELBO, L_1) of the two agrees within Monte Carlo
    error (4.5 standard errors of the difference, averaged over the digits). If the draws
    are ever equal, XLA no longer changes results: time it again as the default."""
    keras.utils.set_random_seed(2)
    cfg = ModelConfig(latent=3, hidden=(12,))
    enc, dec = models.build_encoder(cfg), models.build_decoder(cfg)
    x = binary((20, 784), seed=3)
    k = 400
    out = {jit: evaluate.log_weights(models.VAE(enc, dec, "bernoulli", jit=jit), x, k,
                                     100, 20, seed=5) for jit in (False, True)}
    (lw, kl), (lw_x, kl_x) = out[False], out[True]
    np.testing.assert_allclose(kl_x, kl, rtol=1e-5)
    assert lw.shape == lw_x.shape == (k, 20) and not np.allclose(lw, lw_x)
    d = lw_x.mean(0) - lw.mean(0)  # [20] per digit, independent draws
    se = np.sqrt((lw.var(0, ddof=1) + lw_x.var(0, ddof=1)) / k)
    assert abs(d.mean()) < 4.5 * np.sqrt((se**2).sum()) / len(d), (d.mean(), se.mean())


def test_fused_xla_draws_the_same_numbers_and_differs_only_in_rounding():
    """jit "fused" (XLA auto-clustering of fusible ops) against plain TF on one tiny model
    and seed: the log-weights of 400 posterior draws per digit agree to float rounding
    (the same random draws), where whole-function XLA draws other numbers; and fused is not
    silently plain: it changes some last bits (XLA really ran)."""
    from vaelab import backend

    assert backend.fused_ready(), "silence_tf() should have set quiet.FUSED_FLAGS"
    keras.utils.set_random_seed(2)
    cfg = ModelConfig(latent=3, hidden=(12,))
    enc, dec = models.build_encoder(cfg), models.build_decoder(cfg)
    x = binary((20, 784), seed=3)
    lw = {jit: evaluate.log_weights(models.VAE(enc, dec, "bernoulli", jit=jit), x, 400,
                                    100, 20, seed=5)[0] for jit in (False, "fused", True)}
    np.testing.assert_allclose(lw["fused"], lw[False], rtol=1e-5, atol=1e-3)
    assert not np.array_equal(lw["fused"], lw[False]), "fused ran no XLA cluster"
    assert np.abs(lw[True] - lw[False]).max() > 100 * np.abs(lw["fused"] - lw[False]).max()


FUSED_RUN = """
import sys
from vaelab.quiet import silence_tf; silence_tf()
import io
from pathlib import Path
import numpy as np
from vaelab import data as vdata, train
from vaelab.config import parse_params

class Stop(Exception):
    pass

def stop_at_2(logs):
    if logs["epoch"] == 2 and sys.argv[2] == "kill":
        raise Stop

x, _ = vdata.load_source("mnist5k")
run = parse_params({"model": {"latent": 5, "hidden": [20]},
                    "train": {"epochs": 3, "batch_size": 50, "jit": {"false": False, "fused": "fused"}[sys.argv[3]],
                              "checkpoint_every": 1},
                    "models": {"m": {"objective": "iwae", "k": 5}}}).models["m"]
try:
    r = train.train(run, x[:300], x[300:350], checkpoint=Path(sys.argv[1] + ".ckpt.npz"),
                    on_epoch=stop_at_2, progress=train.Progress("m", 3, io.StringIO()))
except Stop:
    sys.exit(3)
np.savez(sys.argv[1], *(r.encoder.get_weights() + r.decoder.get_weights()))
"""


def test_fused_training_is_deterministic_and_resumes_bit_exact(tmp_path):
    """Three IWAE k=5 epochs with train.jit "fused" in a fresh process, and in two more: killed
    after epoch 2, then resumed from its checkpoint; both end with bit-identical weights (per-machine determinism and the bit-exact resume hold on the
    fused path), close to but not the same as the plain path's (rounding only)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def run(name, mode, jit="fused", rc=0):
        p = subprocess.run([sys.executable, "-c", FUSED_RUN, str(tmp_path / name), mode, jit],
                           cwd=root, capture_output=True, text=True)
        assert p.returncode == rc, p.stderr[-2000:]
        if rc:
            return None
        with np.load(tmp_path / f"{name}.npz") as z:
            return [z[f"arr_{i}"] for i in range(len(z.files))]

    first = run("a", "straight")
    run("c", "kill", rc=3)
    resumed = run("c", "resume")
    plain = run("d", "straight", jit="false")
    assert len(first) == len(plain) == 10
    for a, c, d in zip(first, resumed, plain):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_allclose(a, d, rtol=1e-3, atol=1e-5)
    assert any(not np.array_equal(a, d) for a, d in zip(first, plain))


THREADED_STEPS = """
import sys
if sys.argv[2:] == ["bare"]:  # TensorFlow imported before vaelab.quiet: without its XLA flags
    import tensorflow
from vaelab.quiet import silence_tf; silence_tf()
import keras, numpy as np, tensorflow as tf
from vaelab import models, train
from vaelab.config import parse_params
keras.utils.set_random_seed(0)
run = parse_params({"models": {"m": {"objective": "iwae", "k": 50}}}).models["m"]
model = models.VAE.build(run.model)
step = train.make_step(model, run, train.make_optimizer(model, run, 1e-3), dynamic=True, jit=False)
xs = tf.constant(np.random.default_rng(0).random((800, 784), np.float32))
train.train_epoch(step, xs, np.arange(800), 100, 0, 0, 4)
np.savez(sys.argv[1], *(model.encoder.get_weights() + model.decoder.get_weights()))
"""


def test_thread_counts_change_nothing(tmp_path):
    """TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS (README, Speed) only change speed:
    8 IWAE k=50 steps of the default architecture end with the same weights, up to float32
    rounding. On the AVX-512 machines of earlier sessions they were bit-identical; on a
    2-core AVX2 EPYC (2026-12-02) 43 of 156,800 weights differed, by at most 4.1e-7 (the
    same at 8ed5a78 and after): oneDNN splits the matmuls' sums by thread there. A wrong
    step (a flipped Adam update) would move a weight by about the learning rate, 1e-3."""
    out = {}
    for threads in ("default", "1/2"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("TF_NUM_")}
        if threads != "default":
            env["TF_NUM_INTRAOP_THREADS"], env["TF_NUM_INTEROP_THREADS"] = threads.split("/")
        path = tmp_path / f"{threads.replace('/', '-')}.npz"
        subprocess.run([sys.executable, "-c", THREADED_STEPS, str(path)], env=env, check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        with np.load(path) as z:
            out[threads] = [z[f"arr_{i}"] for i in range(len(z.files))]
    assert len(out["default"]) == len(out["1/2"]) == 14
    for a, b in zip(out["default"], out["1/2"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_fused_flags_alone_change_nothing(tmp_path):
    """vaelab.quiet sets XLA's auto-clustering flags in every TensorFlow process; they act
    only on what runs with `jit: fused`. 8 IWAE k=50 steps of the default (jit: false) path
    end with bit-identical weights with and without them."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = {}
    for variant in ("quiet", "bare"):
        env = {**os.environ, "TF_XLA_FLAGS": ""}
        path = tmp_path / f"{variant}.npz"
        subprocess.run([sys.executable, "-c", THREADED_STEPS, str(path), variant], env=env,
                       check=True, cwd=root)
        with np.load(path) as z:
            out[variant] = [z[f"arr_{i}"] for i in range(len(z.files))]
    assert len(out["quiet"]) == 14
    for a, b in zip(out["quiet"], out["bare"]):
        np.testing.assert_array_equal(a, b)


TINY_BENCH = ["--k", "3", "1", "--steps", "2", "--repeats", "1", "--eval-k", "4",
              "--eval-images", "4", "--chunk", "2", "--eval-batch", "2"]


def test_bench_prints_a_table_and_writes_json(tmp_path, capsys):
    from vaelab import bench

    out = bench.main([*TINY_BENCH, "--json", str(tmp_path / "b.json")])
    table = capsys.readouterr().out
    assert "train iwae k=3 batch=100" in table and "evaluate L_4 on 4 images" in table
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["results"] == [pytest.approx(r) for r in out["results"]]
    train_rows = [r for r in saved["results"] if "samples_per_s" in r]
    assert [r["what"] for r in train_rows] == ["train iwae k=3 batch=100",
                                              "train elbo_analytic k=1 batch=100"]


@pytest.mark.parametrize("objective,k", [("iwae", 5), ("prior_mc", 7)])
def test_bench_flop_model_counts_the_networks_it_trains(objective, k):
    """bench.flops_per_example (what the table's "of matmul peak" rests on) against the Dense
    layers of the model training really builds: forward 2 * rows * in * out per layer (rows:
    the batch for the encoder, k x batch for the decoder, k shared prior samples for eq. 7,
    which never runs the encoder), backward twice that but the first layer's input gradient."""
    from vaelab import bench, models
    from vaelab.config import parse_params

    batch, hidden, latent = 4, (6, 5), 3
    run = parse_params({"model": {"hidden": list(hidden), "latent": latent},
                        "models": {"m": {"objective": objective, "k": k}}}).models["m"]
    model = models.VAE.build(run.model)
    uses_encoder = run.spec.uses_encoder
    rows = {"encoder": batch, "decoder": k * batch if uses_encoder else k}
    layers = [(rows[name], *layer.kernel.shape) for name, net in (("encoder", model.encoder),
                                                                   ("decoder", model.decoder))
              if name == "decoder" or uses_encoder
              for layer in net.layers if isinstance(layer, keras.layers.Dense)]
    fwd = sum(2 * m * a * b for m, a, b in layers)
    first = 2 * np.prod(layers[0])
    want = (3 * fwd - first) / batch
    assert bench.flops_per_example(objective, k, batch, hidden, latent) == pytest.approx(want)


def test_bench_levers_run_each_in_its_own_process_with_its_setting(tmp_path):
    """Each lever reaches its own process: an argument lever (steps per call) and an
    environment lever (thread counts, which TF reads only at start), between two runs of
    the defaults; each process reports the settings it ran with."""
    from vaelab import bench

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k not in bench.THREAD_VARS}
    res = subprocess.run([sys.executable, "-m", "vaelab.bench", *TINY_BENCH, "--levers",
                          "1-step-per-call", "threads-1-2", "--json", str(tmp_path / "l.json")],
                         cwd=root, capture_output=True, text=True, check=True, env=env)
    lines = [ln.split()[0] for ln in res.stdout.splitlines()[1:-1]]
    assert lines == ["defaults", "1-step-per-call", "threads-1-2", "defaults"], res.stdout
    runs = json.loads((tmp_path / "l.json").read_text())["levers"]
    assert [r["lever"] for r in runs] == lines
    intra, inter = bench.THREAD_VARS
    seen = {r["lever"]: (r["steps_per_execution"], r["threads"][intra], r["threads"][inter])
            for r in runs}
    assert seen == {"defaults": (None, "TF default", "TF default"),
                    "1-step-per-call": (1, "TF default", "TF default"),
                    "threads-1-2": (None, "1", "2")}


STUB_PEER = """
import json, sys
framework, k, batch, steps = sys.argv[1], *map(int, sys.argv[3::2])
if framework == "torch":
    raise ModuleNotFoundError("No module named 'torch'")
if framework == "torch-compile":
    raise RuntimeError("no C++ compiler")
print("jax warming up")
print(json.dumps({"framework": framework, "device": "cpu", "k": k, "batch": batch,
                  "steps": steps, "samples_per_s": 250.0, "loss": 1.0}))
"""


def test_bench_peers_parses_each_peer_and_divides_by_it(tmp_path, capsys):
    """--peers: the project's step and each peer (here a stub script) in one invocation; a
    framework that is not installed or fails is one skip line, the rest get vaelab / it."""
    from vaelab import bench

    stub = tmp_path / "peer.py"
    stub.write_text(STUB_PEER)
    out = bench.main(["--peers", "--peer-script", str(stub), "--k", "3", "--batch-size", "20",
                      "--steps", "2", "--repeats", "2", "--json", str(tmp_path / "p.json")])
    table = capsys.readouterr().out
    mine, torch, compiled, jax = out["peers"]
    assert [r["framework"] for r in (torch, compiled, jax)] == ["torch", "torch-compile", "jax"]
    assert "not installed" in torch["skipped"] and "No module named 'torch'" in torch["skipped"]
    assert compiled["skipped"] == "failed: RuntimeError: no C++ compiler"
    # the peer ran the project's k and batch, as many timed steps as repeats x steps
    assert (jax["k"], jax["batch"], jax["steps"]) == (3, 20, 4)
    assert jax["vaelab_over_it"] == pytest.approx(mine["samples_per_s"] / 250.0)
    assert mine["vaelab_over_it"] == 1.0
    flops = bench.flops_per_example("iwae", 3, 20, (200, 200), 50)
    assert out["flops_per_digit"] == flops
    assert jax["gflops"] == pytest.approx(250.0 * flops / 1e9)
    assert jax["of_matmul_rate"] == pytest.approx(jax["gflops"] / out["matmul_gflops"])
    lines = table.splitlines()
    assert sum(ln.startswith(("torch ", "torch-compile ")) and "skipped:" in ln
               for ln in lines) == 2
    jax_line = next(ln for ln in lines if ln.startswith("jax "))
    assert jax_line.split()[2] == "250" and jax_line.endswith(f"{jax['vaelab_over_it']:.2f}x")
    assert json.loads((tmp_path / "p.json").read_text())["peers"][3]["samples_per_s"] == 250.0


def test_bench_flop_count_of_the_iwae_step_is_the_derived_one():
    """The comment in bench.run_peers derives 63,027,200 FLOPs per digit for k=50."""
    from vaelab import bench

    assert bench.flops_per_example("iwae", 50, 100, (200, 200), 50) == 63_027_200


def test_bench_peers_without_a_peer_script_is_one_line_and_exit_2(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-m", "vaelab.bench", "--peers", "--peer-script",
                          str(tmp_path / "absent.py")], cwd=root, capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "absent.py" in res.stderr
    assert "--peer-script PATH" in res.stderr
