"""Benchmark the project's real code paths: `python -m vaelab.bench --help`.

Measures training samples/s (the same compiled step `dvc repro` runs), L_k evaluation
images/s (the same chunked log-weights the evaluate stage uses) and, to read those against
the hardware, the machine's own fp32 matmul rate. Each figure: warm-up, then the median of
several timed repeats. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

from .quiet import silence_tf

silence_tf()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from . import evaluate, train  # noqa: E402
from .config import parse_params  # noqa: E402


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a = tf.random.stateless_normal([n, n], seed=[0, 1])
    b = tf.random.stateless_normal([n, n], seed=[0, 2])
    mm = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    mm().numpy()
    return 2 * n**3 / _median_time(lambda: mm().numpy(), repeats) / 1e9


def flops_per_example(hidden, latent: int, k: int, objective: str) -> float:
    """Matmul FLOPs of one training example: forward + backward ~ 3x forward."""
    sizes = [784, *hidden, latent]
    enc = sum(a * b for a, b in zip(sizes, sizes[1:])) + sizes[-2] * latent  # loc and scale
    dec_sizes = [latent, *reversed(hidden), 784]
    dec = sum(a * b for a, b in zip(dec_sizes, dec_sizes[1:]))
    n_enc = 0 if objective == "prior_mc" else 1
    return 3 * 2 * (n_enc * enc + k * dec)


def bench_train(objective: str, k: int, batch_size: int, steps: int, repeats: int,
                hidden=(200, 200), latent: int = 50, jit: bool = False,
                precision: str = "float32") -> dict:
    params = parse_params({
        "model": {"hidden": list(hidden), "latent": latent, "precision": precision},
        "train": {"batch_size": batch_size, "jit": jit},
        "models": {"m": {"objective": objective, "k": k}},
    })
    run = params.models["m"]
    import keras

    model = train.Model(run)
    opt = keras.optimizers.Adam(1e-3, epsilon=1e-4)
    opt.build(model.variables)
    xs = tf.constant(np.random.default_rng(0).random((steps * batch_size, 784), np.float32))
    step = train.make_step(model, opt, dynamic=True, jit=jit)
    counter = iter(range(0, 10**9, steps))

    def run_steps():
        first = next(counter)
        for i in range(steps):
            logs, _ = step(xs[i * batch_size:(i + 1) * batch_size], tf.constant([0, first + i]))
        float(logs["bound"])  # wait for the last step

    run_steps()  # compile and warm up
    seconds = _median_time(run_steps, repeats)
    sps = steps * batch_size / seconds
    what = f"train {objective} k={k} batch={batch_size}"
    return {"what": what, "samples_per_s": sps,
            "gflops": sps * flops_per_example(hidden, latent, k, objective) / 1e9}


def bench_eval(k: int, n_images: int, chunk: int, batch_size: int, repeats: int,
               jit: bool = False, precision: str = "float32") -> dict:
    params = parse_params({"model": {"precision": precision},
                           "models": {"m": {"objective": "elbo_analytic"}}})
    model = train.Model(params.models["m"])
    m = evaluate.Loaded("bench", model.encoder, model.decoder,
                        {"model.decoder": "bernoulli", "model.latent": 50}, jit=jit)
    x = (np.random.default_rng(0).random((n_images, 784)) < 0.2).astype(np.float32)
    evaluate.log_weights(m, x[:batch_size], chunk, chunk, batch_size, 0)  # compile
    seconds = _median_time(lambda: evaluate.log_weights(m, x, k, chunk, batch_size, 0), repeats)
    return {"what": f"evaluate L_{k} on {n_images} images", "images_per_s": n_images / seconds}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objective", default="iwae")
    p.add_argument("--k", type=int, nargs="+", default=[50, 1],
                   help="IWAE k values to time (k=1 is timed as the VAE, elbo_analytic)")
    p.add_argument("--batch-size", type=int, nargs="+", default=[100])
    p.add_argument("--steps", type=int, default=20, help="training steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--eval-k", type=int, default=5000)
    p.add_argument("--eval-images", type=int, default=100)
    p.add_argument("--chunk", type=int, default=500, help="evaluate.chunk")
    p.add_argument("--eval-batch", type=int, default=100, help="evaluate.batch_size")
    p.add_argument("--precision", default="float32", choices=("float32", "mixed_bfloat16"),
                   help="model.precision")
    p.add_argument("--jit", action="store_true", help="time with XLA (train.jit: true)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)

    devices = [d.name for d in tf.config.list_logical_devices()]
    rows = []
    peak = matmul_gflops()
    rows.append({"what": "fp32 matmul 2048x2048", "gflops": peak})
    for bs in args.batch_size:
        for k in args.k:
            obj = "elbo_analytic" if k == 1 else args.objective
            rows.append(bench_train(obj, k, bs, args.steps, args.repeats, jit=args.jit,
                                    precision=args.precision))
    rows.append(bench_eval(args.eval_k, args.eval_images, args.chunk, args.eval_batch,
                           max(1, args.repeats // 2), jit=args.jit, precision=args.precision))

    print(f"devices: {', '.join(devices)}; {platform.processor() or platform.machine()}, "
          f"TF {tf.__version__}, XLA {'on' if args.jit else 'off'}, {args.precision}")
    print(f"{'benchmark':<40} {'figure':>22} {'of matmul peak':>15}")
    for r in rows:
        if "samples_per_s" in r:
            fig = f"{r['samples_per_s']:,.0f} samples/s"
            frac = f"{100 * r['gflops'] / peak:.0f}%"
        elif "images_per_s" in r:
            fig, frac = f"{r['images_per_s']:,.1f} images/s", ""
        else:
            fig, frac = f"{r['gflops']:,.0f} GFLOP/s", "100%"
        print(f"{r['what']:<40} {fig:>22} {frac:>15}")
    out = {"devices": devices, "tensorflow": tf.__version__, "jit": args.jit, "precision": args.precision,
           "results": rows}
    if args.json:
        from .io import write_json

        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
