"""Benchmark the project's real code paths: `python -m vaelab.bench --help`.

Measures training samples/s (the same compiled step and epoch loop `dvc repro` runs), L_k
evaluation images/s (the same chunked log-weights the evaluate stage uses) and, to read
those against the hardware, the machine's own fp32 matmul rate and the time a training
step's matmuls take on their own. Each figure: warm-up, then the median of several timed
repeats. Prints a table and writes JSON.

`--levers` times each speed lever (XLA, bfloat16, thread counts, tf.data, steps per call,
TFP's own Bernoulli log_prob) in a process of its own, next to the defaults.

`--backend jax` times the same code on Keras' JAX backend (TFP's JAX substrate); the
backend is chosen before Keras is imported, so this module imports Keras lazily.

`--peers` times the IWAE training step against hand-written PyTorch and JAX steps (a peer
script outside the project, run in subprocesses) in one invocation and prints the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import registry
from .config import UserError, parse_params

THREAD_VARS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")

# name -> (extra arguments, extra environment). Thread counts can only be set before
# TensorFlow starts, hence a process per lever.
LEVERS = {
    "defaults": ([], {}),
    "xla": (["--jit"], {}),
    "xla-fused": (["--jit", "fused"], {}),
    "bfloat16": (["--precision", "mixed_bfloat16"], {}),
    "threads-1-2": ([], {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "2"}),
    "threads-1-1": ([], {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}),
    "threads-2-1": ([], {"TF_NUM_INTRAOP_THREADS": "2", "TF_NUM_INTEROP_THREADS": "1"}),
    "tf.data": (["--feed", "tf.data"], {}),
    "1-step-per-call": (["--steps-per-execution", "1"], {}),
    "8-steps-per-call": (["--steps-per-execution", "8"], {}),
    "tfp-bernoulli": (["--tfp-bernoulli"], {}),
}


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def _normal(*shape, seed=0):
    from keras import ops

    return ops.convert_to_tensor(np.random.default_rng(seed).standard_normal(shape, np.float32))


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    from keras import ops

    from . import backend

    a, b = _normal(n, n, seed=1), _normal(n, n, seed=2)
    mm = backend.compile(lambda a, b: ops.sum(ops.matmul(a, b)), [])
    np.asarray(mm(a, b))
    return 2 * n**3 / _median_time(lambda: np.asarray(mm(a, b)), repeats) / 1e9


def step_matmuls(objective: str, k: int, batch_size: int, hidden, latent: int):
    """(rows, in, out) of every Dense matmul in one training step's forward pass."""
    dec = [latent, *reversed(hidden), 784]
    if not registry.OBJECTIVES[objective].uses_encoder:  # eq. (7): k prior samples, shared
        return [(k, a, b) for a, b in zip(dec, dec[1:])]
    enc = [784, *hidden]
    return ([(batch_size, a, b) for a, b in zip(enc, enc[1:])]
            + [(batch_size, hidden[-1], latent)] * 2  # loc and scale
            + [(k * batch_size, a, b) for a, b in zip(dec, dec[1:])])  # k samples, one chain


def flops_per_example(objective: str, k: int, batch_size: int, hidden, latent: int) -> float:
    """Matmul FLOPs of one training example: forward, and the two backward products (the
    first layer's input gradient is not needed)."""
    shapes = step_matmuls(objective, k, batch_size, hidden, latent)
    fwd = sum(2 * m * a * b for m, a, b in shapes)
    return (3 * fwd - 2 * np.prod(shapes[0])) / batch_size


def matmul_seconds(objective: str, k: int, batch_size: int, hidden, latent: int,
                   repeats: int) -> float:
    """Time of one training step's matmuls alone (forward and backward, same shapes, one
    compiled call): set against the step's time it says what share of a step is matmul
    work and what share is everything else (element-wise work, per-op overhead)."""
    from keras import ops

    from . import backend

    shapes = step_matmuls(objective, k, batch_size, hidden, latent)
    xs = [_normal(m, a, seed=i) for i, (m, a, _) in enumerate(shapes)]
    ws = [_normal(a, b, seed=100 + i) for i, (_, a, b) in enumerate(shapes)]
    gs = [_normal(m, b, seed=200 + i) for i, (m, _, b) in enumerate(shapes)]

    def matmuls(xs, ws, gs):
        total = 0.0
        for i, (x, w, g) in enumerate(zip(xs, ws, gs)):
            # every product is summed whole: a sliced one XLA could shrink to the slice
            total += ops.sum(ops.matmul(x, w)) + ops.sum(ops.matmul(ops.transpose(x), g))
            if i:
                total += ops.sum(ops.matmul(g, ops.transpose(w)))
        return total

    compiled = backend.compile(matmuls, [])
    np.asarray(compiled(xs, ws, gs))
    return _median_time(lambda: np.asarray(compiled(xs, ws, gs)), 2 * repeats)


# ---------------------------------------------------------------------------------------
# training

def _tfdata_epoch(step, xs, order, batch_size, first_step, per_call):
    """train.train_epoch fed by tf.data with prefetch (a lever, not what training does)."""
    import tensorflow as tf

    ds = (tf.data.Dataset.from_tensor_slices(order.reshape(-1, batch_size))
          .map(lambda idx: tf.gather(xs, idx)).batch(per_call).prefetch(tf.data.AUTOTUNE))
    for c, xb in enumerate(ds):  # [n, B, 784]
        seeds = tf.constant([[0, first_step + c * per_call + j] for j in range(len(xb))])
        logs, finite = step(xb, seeds)
        if not finite.numpy().all():
            break
        for v in logs.values():  # fetch the logs, as train_epoch does
            v.numpy()


def bench_train(objective: str, k: int, batch_size: int, steps: int, repeats: int,
                hidden=(200, 200), latent: int = 50, jit: bool | str = False,
                precision: str = "float32", feed: str = "gather",
                steps_per_execution: int | None = None, layers: int = 1,
                options: dict | None = None) -> dict:
    """Training steps per second. layers 2: Burda et al.'s two-layer model (h1 100 units,
    100-100 between h1 and h2, h2 `latent`); its FLOP count is not modelled (gflops nan).
    `options`: the objective's per-model options (m, beta, estimator; vaelab.registry)."""
    options = options or {}
    from keras import ops

    from . import models, train

    train_cfg = {"batch_size": batch_size, "jit": jit}
    if steps_per_execution is not None:
        train_cfg["steps_per_execution"] = steps_per_execution
    params = parse_params({
        "model": {"hidden": list(hidden), "latent": latent, "precision": precision,
                  **({"layers": layers} if layers != 1 else {})},
        "train": train_cfg,
        "models": {"m": {"objective": objective, "k": k, **options}},
    }, file="vaelab.bench options")
    per_call = params.models["m"].train.steps_per_execution
    run = params.models["m"]
    model = models.VAE.build(run.model)
    opt = train.make_optimizer(model, run, run.train.learning_rate)
    steps = -(-steps // per_call) * per_call
    n = steps * batch_size
    xs = ops.convert_to_tensor(np.random.default_rng(0).random((n, 784), np.float32))
    step = train.make_step(model, run, opt, dynamic=True, jit=jit)
    epochs = iter(range(10**9))

    def run_epoch():
        e = next(epochs)
        order = np.random.default_rng([0, e]).permutation(n)
        if feed == "tf.data":
            _tfdata_epoch(step, xs, order, batch_size, e * steps, per_call)
        else:
            train.train_epoch(step, xs, order, batch_size, 0, e * steps, per_call)

    run_epoch()  # compile and warm up
    step_s = _median_time(run_epoch, repeats) / steps
    # m x k samples per digit for miwae/piwae (vaelab.registry); an objective with two
    # gradient targets (piwae, stl, dreg) runs one backward pass per target, which the
    # FLOP model (one backward pass) does not count
    samples = params.models["m"].samples
    mm_s = matmul_seconds(objective, samples, batch_size, hidden, latent, repeats)
    sps = batch_size / step_s
    label = f"train {objective} k={k}" + "".join(f" {n}={v}" for n, v in options.items())
    if layers != 1:
        return {"what": f"{label} batch={batch_size} {layers} layers",
                "samples_per_s": sps, "gflops": float("nan"), "step_ms": 1e3 * step_s,
                "matmul_ms": float("nan")}
    return {"what": f"{label} batch={batch_size}", "samples_per_s": sps,
            "gflops": sps * flops_per_example(objective, samples, batch_size, hidden, latent) / 1e9,
            "step_ms": 1e3 * step_s, "matmul_ms": 1e3 * mm_s}


def bench_eval(k: int, n_images: int, chunk: int, batch_size: int, repeats: int,
               jit: bool | str = False, precision: str = "float32") -> dict:
    from . import evaluate, models

    params = parse_params({"model": {"precision": precision},
                           "models": {"m": {"objective": registry.one_sample()}}})
    m = models.VAE.build(params.models["m"].model)
    m.jit = jit
    x = (np.random.default_rng(0).random((n_images, 784)) < 0.2).astype(np.float32)
    evaluate.log_weights(m, x[:batch_size], chunk, chunk, batch_size, 0)  # compile
    seconds = _median_time(lambda: evaluate.log_weights(m, x, k, chunk, batch_size, 0), repeats)
    return {"what": f"evaluate L_{k} on {n_images} images", "images_per_s": n_images / seconds}


# ---------------------------------------------------------------------------------------
# peers: hand-written steps a user would otherwise write, timed beside the project's

PEER_FRAMEWORKS = ("torch", "torch-compile", "jax")
# a hung peer (a compile that never ends, a device wait) is a skip line, not a hung benchmark;
# 30 minutes is generous for the default 100 timed steps on any machine
PEER_TIMEOUT_S = 1800
# the peer script lives beside the repository, never in it: the project must not need it
DEFAULT_PEER_SCRIPT = Path(__file__).resolve().parents[1].parent / "shared" / "bench" / "peer_iwae.py"


def peer_script(path: str | None) -> Path:
    script = Path(path) if path else DEFAULT_PEER_SCRIPT
    if not script.is_file():
        raise UserError(
            f"no peer script at {script}: pass --peer-script PATH, a script run as `PYTHON PATH "
            f"{'|'.join(PEER_FRAMEWORKS)} --k K --batch B --steps N` that prints one JSON line "
            f"with samples_per_s (the team's is shared/bench/peer_iwae.py, beside the repository)")
    return script


def run_peer(python: str, script: Path, framework: str, k: int, batch: int,
             steps: int) -> dict:
    """One peer in its own process: its JSON line, or {"skipped": why} when its framework
    is not installed for `python` or the run fails (one line each, the benchmark goes on)."""
    try:
        res = subprocess.run([python, str(script), framework, "--k", str(k), "--batch",
                              str(batch), "--steps", str(steps)], capture_output=True, text=True,
                             timeout=PEER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"framework": framework, "skipped": f"no result within {PEER_TIMEOUT_S} s"}
    errors = res.stderr.strip().splitlines()
    last = errors[-1] if errors else f"exit status {res.returncode}"
    if res.returncode and last.startswith("ModuleNotFoundError"):
        return {"framework": framework, "skipped": f"not installed for {python} ({last})"}
    if res.returncode:
        return {"framework": framework, "skipped": f"failed: {last}"}
    try:
        return {"framework": framework, **json.loads(res.stdout.strip().splitlines()[-1])}
    except (IndexError, ValueError):
        return {"framework": framework, "skipped": f"printed no JSON line: {res.stdout[-200:]!r}"}


def peer_table(project: dict, peers: list[dict], peak: float, flops: float) -> list[dict]:
    """Rows of the comparison: digits/s, GFLOP/s (digits/s x `flops` per digit), share of
    the matmul rate `peak`, and vaelab's digits/s over each row's."""
    rows = []
    for r in [project, *peers]:
        if "skipped" in r:
            rows.append(r)
            continue
        sps = r["samples_per_s"]
        rows.append({**r, "gflops": sps * flops / 1e9, "of_matmul_rate": sps * flops / 1e9 / peak,
                     "vaelab_over_it": project["samples_per_s"] / sps})
    return rows


def run_peers(args) -> dict:
    from . import backend

    script = peer_script(args.peer_script)
    k, batch = args.k[0], args.batch_size[0]
    python = args.peer_python or sys.executable
    peak = matmul_gflops()
    # FLOPs per digit of the 784-200-200-50 MLP step (step_matmuls, flops_per_example): a
    # Dense layer's forward product costs 2 x rows x in x out; backward, the weight gradient
    # and the input gradient cost as much each, except the first layer's input gradient (the
    # digits need none). Per digit, with k samples through the decoder:
    #   encoder 784*200 + 200*200 + 200*50 (loc) + 200*50 (scale) = 216,800 multiply-adds
    #   decoder k * (50*200 + 200*200 + 200*784)                 = k * 206,800
    #   forward 2 * (216,800 + k * 206,800); total 3 x forward - 2 * 784*200
    #   k=50: 3 * 2 * 10,556,800 - 313,600 = 63,027,200 FLOPs (63 MFLOP) per digit.
    # The peers run the same layers (one 200 -> 2*50 encoder head), so the same count holds.
    flops = flops_per_example(args.objective, k, batch, (200, 200), 50)
    mine = bench_train(args.objective, k, batch, args.steps, args.repeats, jit=args.jit)
    name = f"vaelab ({backend.NAME}{_xla(args.jit)})"
    project = {"framework": name, "device": ", ".join(backend.devices()),
               "samples_per_s": mine["samples_per_s"]}
    # as many timed steps as the project's step gets (repeats x steps)
    peers = [run_peer(python, script, f, k, batch, args.steps * args.repeats)
             for f in args.peer_frameworks]
    rows = peer_table(project, peers, peak, flops)
    print(f"IWAE k={k}, batch {batch}, 784-200-200-50 MLP: {flops / 1e6:.2f} MFLOP per digit "
          f"(forward + backward); fp32 matmul 2048x2048: {peak:,.0f} GFLOP/s; "
          f"{os.cpu_count()} cores; peers: {script} under {python}")
    print(f"{'run':<24} {'device':<16} {'digits/s':>9} {'GFLOP/s':>8} {'of matmul rate':>15} "
          f"{'vaelab / it':>12}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['framework']:<24} skipped: {r['skipped']}")
            continue
        print(f"{r['framework']:<24} {r['device'][:16]:<16} {r['samples_per_s']:>9,.0f} "
              f"{r['gflops']:>8,.1f} {100 * r['of_matmul_rate']:>14.0f}% "
              f"{r['vaelab_over_it']:>11.2f}x")
    return {"k": k, "batch": batch, "matmul_gflops": peak, "flops_per_digit": flops,
            "peer_script": str(script), "peer_python": python, "peers": rows}


# ---------------------------------------------------------------------------------------

def _print_table(rows: list[dict], peak: float) -> None:
    print(f"{'benchmark':<34} {'figure':>20} {'of matmul peak':>15} {'step / of it matmuls':>22}")
    for r in rows:
        step = ""
        if "samples_per_s" in r:
            fig = f"{r['samples_per_s']:,.0f} samples/s"
            frac = f"{100 * r['gflops'] / peak:.0f}%"
            step = f"{r['step_ms']:.2f} / {r['matmul_ms']:.2f} ms"
        elif "images_per_s" in r:
            fig, frac = f"{r['images_per_s']:,.1f} images/s", ""
        else:
            fig, frac = f"{r['gflops']:,.0f} GFLOP/s", "100%"
        print(f"{r['what']:<34} {fig:>20} {frac:>15} {step:>22}")


def run_levers(names: list[str], passthrough: list[str]) -> list[dict]:
    """Each lever in a fresh process (`defaults` first and last, to show the drift between
    identical runs); returns their JSON results and prints one line per lever."""
    order = ["defaults", *[n for n in names if n != "defaults"], "defaults"]
    return run_variants([(name, *LEVERS[name]) for name in order], passthrough, "lever")


def run_variants(variants: list[tuple[str, list, dict]], passthrough: list[str],
                 label: str) -> list[dict]:
    """Each (name, extra arguments, extra environment) in a fresh process; prints one line
    per variant, each figure also as % of the first variant (of the mean of its runs)."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, args, env) in enumerate(variants):
            path = os.path.join(tmp, f"{i}.json")
            cmd = [sys.executable, "-m", "vaelab.bench", *passthrough, *args, "--json", path]
            subprocess.run(cmd, env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL)
            with open(path) as f:
                out.append({label: name, **json.load(f)})
    figures = [{r["what"]: r.get("samples_per_s", r.get("images_per_s"))
                for r in o["results"][1:]} for o in out]
    cols = list(figures[0])
    print(f"{label:<18}" + "".join(f"{c:>38}" for c in cols))
    first = [fig for o, fig in zip(out, figures) if o[label] == out[0][label]]
    base = {c: statistics.mean([fig[c] for fig in first]) for c in cols}
    for o, fig in zip(out, figures):
        cells = "".join(f"{fig[c]:>28,.1f} ({100 * (fig[c] / base[c] - 1):+4.0f}%)" for c in cols)
        print(f"{o[label]:<18}{cells}")
    runs = f"the mean of the {len(first)} `{out[0][label]}` runs" if len(first) > 1 else f"`{out[0][label]}`"
    print(f"(%: against {runs})")
    return out


def _jit_mode(text: str) -> bool | str:
    """--jit's value: train.jit's modes, as spelled on a command line."""
    modes = {"false": False, "true": True, "fused": "fused"}
    if text.lower() not in modes:
        raise argparse.ArgumentTypeError(f"--jit takes {', '.join(modes)}, not {text!r}")
    return modes[text.lower()]


def _xla(jit: bool | str) -> str:
    """How the timed code compiles, for the tables: '', ', XLA' or ', XLA fused'."""
    from . import backend

    if backend.NAME == "jax" or jit is True:
        return ", XLA"
    return ", XLA fused" if jit == "fused" else ""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objective", default=registry.of_family("iwae")[0],
                   choices=list(registry.OBJECTIVES))
    for h in registry.HPARAMS.values():  # each objective's own options (vaelab.registry)
        p.add_argument(f"--{h.name}", type=h.type, choices=h.choices or None,
                       help=f"{', '.join(registry.taking(h.name))}: {h.help}")
    p.add_argument("--k", type=int, nargs="+", default=[50, 1],
                   help=f"IWAE k values to time (k=1 is timed as the VAE, "
                        f"{registry.one_sample()})")
    p.add_argument("--batch-size", type=int, nargs="+", default=[100])
    p.add_argument("--steps", type=int, default=20, help="training steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--eval-k", type=int, default=5000)
    p.add_argument("--eval-images", type=int, default=100, help="0: no evaluation benchmark")
    p.add_argument("--chunk", type=int, default=500, help="evaluate.chunk")
    p.add_argument("--eval-batch", type=int, default=100, help="evaluate.batch_size")
    p.add_argument("--precision", default="float32", choices=("float32", "mixed_bfloat16"),
                   help="model.precision")
    p.add_argument("--jit", nargs="?", const=True, default=False, type=_jit_mode,
                   help="time with XLA: train.jit and evaluate.jit true (bare --jit) or fused")
    p.add_argument("--feed", default="gather", choices=("gather", "tf.data"),
                   help="how batches reach the step: gathered from the in-memory set, as "
                        "training does, or through tf.data with prefetch")
    p.add_argument("--steps-per-execution", type=int, default=None,
                   help="training steps per compiled call (default: train.steps_per_execution's)")
    p.add_argument("--tfp-bernoulli", action="store_true",
                   help="use tfd.Bernoulli's own log_prob instead of models.BernoulliLogits")
    p.add_argument("--levers", nargs="*", choices=sorted(LEVERS), metavar="LEVER",
                   help=f"time these levers (all when none is named), each in its own "
                        f"process with the other options given: {', '.join(LEVERS)}")
    p.add_argument("--backend", nargs="+", choices=("tensorflow", "jax"), default=None,
                   help="Keras backend(s) to time (default: KERAS_BACKEND, else tensorflow); "
                        "several: each in its own process, side by side")
    p.add_argument("--layers", type=int, choices=(1, 2), default=1,
                   help="stochastic layers of the trained model (model.layers; k=1: "
                        f"{registry.one_sample(2)})")
    p.add_argument("--peers", action="store_true",
                   help="time the training step (first --k, first --batch-size) against "
                        "hand-written PyTorch and JAX steps run by --peer-script, and print "
                        "vaelab's digits/s over each")
    p.add_argument("--peer-script", default=None,
                   help="the peers' script (default: ../shared/bench/peer_iwae.py from the "
                        "repository's root)")
    p.add_argument("--peer-python", default=None,
                   help="the Python that runs the peers (default: this one)")
    p.add_argument("--peer-frameworks", nargs="+", choices=PEER_FRAMEWORKS,
                   default=list(PEER_FRAMEWORKS))
    p.add_argument("--json", default=None, help="write the results here")
    return p


def _saved(path: str | None, out: dict) -> dict:
    if path:
        from .io import write_json

        write_json(path, out)
    return out


def _check_peers(args) -> None:
    """Before TensorFlow starts: the peer script exists, and nothing asks for a step the peers
    do not have."""
    peer_script(args.peer_script)  # a missing script: one line
    if (args.objective != registry.of_family("iwae")[0] or args.levers is not None
            or args.layers != 1 or len(args.backend or []) > 1):
        raise UserError("--peers times the one-layer IWAE step (the peers' model) on one "
                        "backend: drop --objective, --levers, --layers and extra --backend")


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    if args.peers:
        _check_peers(args)
    if args.backend is not None and len(args.backend) > 1:
        if args.levers is not None:
            raise SystemExit("bench: error: --levers and several --backend: time the levers "
                             "of one backend at a time")
        raw = argv if argv is not None else sys.argv[1:]
        passthrough = [a for a in raw if a != "--backend" and a not in args.backend]
        variants = [(b, ["--backend", b], {}) for b in args.backend]
        return _saved(args.json, {"backends": run_variants(variants, passthrough, "backend")})

    from .quiet import use_backend

    use_backend(args.backend[0] if args.backend else os.environ.get("KERAS_BACKEND", "tensorflow"))
    from . import backend, models

    if args.levers is not None:
        skip = {"--levers"} | set(LEVERS)
        passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in skip]
        return _saved(args.json, {"levers": run_levers(args.levers or list(LEVERS), passthrough)})

    if args.peers:
        return _saved(args.json, run_peers(args))

    if args.tfp_bernoulli:
        models.BernoulliLogits = models.tfd.Bernoulli
    threads = {v: os.environ.get(v, "TF default") for v in THREAD_VARS}
    devices = backend.devices()
    versions = backend.versions()
    rows = []
    peak = matmul_gflops()
    rows.append({"what": "fp32 matmul 2048x2048", "gflops": peak})
    for bs in args.batch_size:
        for k in args.k:
            obj = registry.one_sample(args.layers) if k == 1 else args.objective
            options = {} if obj != args.objective else {
                n: getattr(args, n) for n in registry.HPARAMS if getattr(args, n) is not None}
            rows.append(bench_train(obj, k, bs, args.steps, args.repeats, jit=args.jit,
                                    precision=args.precision, feed=args.feed,
                                    steps_per_execution=args.steps_per_execution,
                                    layers=args.layers, options=options))
    if args.eval_images:
        rows.append(bench_eval(args.eval_k, args.eval_images, args.chunk, args.eval_batch,
                               max(1, args.repeats // 2), jit=args.jit,
                               precision=args.precision))

    print(f"devices: {', '.join(devices)}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, " + ", ".join(f"{k} {v}" for k, v in versions.items())
          + f", XLA {_xla(args.jit).lstrip(', ') or 'off'}, "
          f"{args.precision}, threads intra/inter-op: {'/'.join(threads.values())}, "
          f"steps per call: {args.steps_per_execution or 'params default'}, feed: {args.feed}")
    _print_table(rows, peak)
    out = {"devices": devices, **versions, "jit": args.jit,
           "precision": args.precision, "feed": args.feed, "threads": threads,
           "steps_per_execution": args.steps_per_execution, "tfp_bernoulli": args.tfp_bernoulli,
           "results": rows}
    return _saved(args.json, out)


if __name__ == "__main__":
    from .cli import run

    run(main, "bench")
