"""GPU check on the active Keras backend, with no TensorFlow, MLflow or DVC needed:
`python -m vaelab.gpucheck --json FILE [--epochs N] [--quick]`.

Made for a machine that has CUDA and JAX but no TensorFlow and no network
(scripts/gpu_check.sh, BACKEND=jax). It prints the devices the backend sees, runs the
benchmark rows of `vaelab.bench` on it (IWAE k=50 and the VAE training at batch 100 and
1000, L_5000 evaluation), then trains the default params' models on mnist5k through the
library (data.prepare into a temporary folder, train.train, evaluate.evaluate_model on the
test split with the params' evaluate settings), timing the whole, and writes every figure to
one JSON file. KERAS_BACKEND picks the backend (jax when unset).
"""
from __future__ import annotations

import argparse
import dataclasses
import io as _io
import os
import platform
import statistics
import sys
import tempfile
import time


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="write the figures here")
    p.add_argument("--params", default="params.yaml", help="the models, data and evaluate settings")
    p.add_argument("--epochs", type=int, default=None, help="epochs per model (default: params')")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="train.seed of each pass over the models (default: params'); the "
                        "first pass is the timed one, the others give the seed-to-seed spread")
    p.add_argument("--quick", action="store_true",
                   help="tiny settings (1 epoch, few bench steps, L_500 on 100 images, "
                        "small evaluation) to try the check itself on a CPU")
    p.add_argument("--no-bench", action="store_true",
                   help="skip the benchmark rows (scripts/gpu_run.py times them with "
                        "`vaelab.bench` beside the peers, in the same call)")
    args = p.parse_args(argv)

    from .config import load_params

    params = load_params(args.params)  # before Keras: a params mistake costs no start-up
    # JAX's persistent compilation cache, in a folder of this run unless the caller names
    # one: the four models' evaluation functions (and the VAE's training step, which the
    # benchmark compiled) are the same XLA programs, compiled once instead of per model;
    # the same executable gives the same numbers. Set before JAX is imported.
    cache = tempfile.TemporaryDirectory(prefix="vaelab-jax-cache-")
    ours = {"JAX_COMPILATION_CACHE_DIR": cache.name,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
    ours = {k: v for k, v in ours.items() if k not in os.environ}
    os.environ.update(ours)
    try:
        return _check(args, params)
    finally:
        for k in ours:
            os.environ.pop(k, None)
        cache.cleanup()


def _bench_rows(quick: bool) -> list[dict]:
    """The benchmark rows, from vaelab.bench's own functions: the matmul rate, the IWAE k=50
    and VAE steps at two batch sizes, L_k evaluation."""
    from . import bench

    steps, repeats = (4, 1) if quick else (20, 5)
    eval_k, eval_images = (500, 100) if quick else (5000, 500)
    rows = [{"what": "fp32 matmul 2048x2048", "gflops": bench.matmul_gflops(repeats=repeats)}]
    for bs in (100, 1000):
        for objective, k in (("iwae", 50), ("elbo_analytic", 1)):
            rows.append(bench.bench_train(objective, k, bs, steps, repeats))
            print(f"gpucheck: {rows[-1]['what']}: {rows[-1]['samples_per_s']:,.0f} samples/s",
                  flush=True)
    rows.append(bench.bench_eval(eval_k, eval_images, 500, 100, max(1, repeats // 2)))
    print(f"gpucheck: {rows[-1]['what']}: {rows[-1]['images_per_s']:,.0f} images/s", flush=True)
    return rows


def _one_model(name: str, entry, split: dict, cfg, epochs: int | None,
               seed: int | None) -> dict:
    """Train one model of the default run through the library and evaluate it: its time,
    split by part, and its figures."""
    from . import backend, evaluate, models, train

    t = dataclasses.replace(entry.train, backend=backend.NAME,
                            **({"epochs": epochs} if epochs else {}),
                            **({"seed": seed} if seed is not None else {}))
    entry = dataclasses.replace(entry, train=t)
    tic = time.perf_counter()
    result = train.train(entry, split["train"]["x"], split["valid"]["x"],
                         progress=train.Progress(name, t.epochs, _io.StringIO()))
    train_s = time.perf_counter() - tic
    m = models.VAE(result.encoder, result.decoder, info=entry.as_flat_dict(), name=name)
    tic = time.perf_counter()
    r = evaluate.evaluate_model(m, evaluate.test_inputs(split["test"], m.kind), cfg)
    eval_s = time.perf_counter() - tic
    out = {
        "objective": entry.objective, "k": entry.k, "epochs": t.epochs,
        "train_seconds": train_s, "train_samples_per_s": result.samples_per_s,
        "valid_bound": result.history[-1]["valid_bound"],
        # where the time goes: the training calls (the first epoch's include compiling
        # the step), per-epoch validation, the rest (building, input conversion); each
        # evaluation part (the first call of each includes its compilation)
        "seconds": {"train_steps": result.seconds,
                    # of which the first epoch, with the step's compilation
                    "train_first_epoch": result.history[0]["seconds"],
                    "validation": result.valid_seconds,
                    "train_other": train_s - result.seconds - result.valid_seconds,
                    **{f"eval_{part}": v for part, v in r["_seconds"].items()}},
        "eval_seconds": eval_s, "eval_images_per_s": r["eval_images_per_s"],
        "nll": r["nll"], "elbo": r["elbo"], "active_units": r["active_units"],
    }
    print(f"gpucheck: {name}: {t.epochs} epochs in {train_s:.1f}s "
          f"({result.samples_per_s:,.0f} samples/s), evaluated in {eval_s:.1f}s: "
          f"NLL {r['nll']:.2f}, {r['active_units']} active units", flush=True)
    print("gpucheck:   seconds: " + ", ".join(
        f"{part} {v:.2f}" for part, v in out["seconds"].items()), flush=True)
    return out


def _machine() -> dict:
    """Where the check runs: host, versions, devices (printed too)."""
    from . import backend

    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(),
           "python": platform.python_version(), "cpu_count": os.cpu_count(),
           "jax_compilation_cache_dir": os.environ.get("JAX_COMPILATION_CACHE_DIR"),
           **backend.versions(), "devices": backend.devices()}
    print(f"gpucheck: backend {backend.NAME}, devices: {', '.join(out['devices'])}", flush=True)
    print("gpucheck: " + ", ".join(f"{k} {v}" for k, v in backend.versions().items()), flush=True)
    return out


def _check(args, params) -> dict:
    from .quiet import use_backend

    use_backend(os.environ.get("KERAS_BACKEND", "jax"))
    from . import data
    from .io import write_json

    wall = time.perf_counter()
    out = {**_machine(), "quick": args.quick}

    out["bench"] = [] if args.no_bench else _bench_rows(args.quick)

    # -- the default run's models, trained and evaluated through the library -------------
    cfg = params.evaluate
    if args.quick:
        cfg = dataclasses.replace(cfg, k=100, chunk=50, snr_repeats=3, snr_digits=2,
                                  elbo_draws=10,
                                  snr_k=(1, 5), prior_k=tuple(k for k in cfg.prior_k if k <= 100))
    epochs = args.epochs or (1 if args.quick else None)
    models_out = {}
    tic_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tic = time.perf_counter()
        data.prepare(params.data, tmp)
        split = {part: data.load_prepared(tmp, part) for part in data.PARTS}
        prepare_s = time.perf_counter() - tic

    def run_models(seed: int | None) -> dict:
        models_out = {}
        for name, entry in params.models.items():
            models_out[name] = _one_model(name, entry, split, cfg, epochs, seed)
        return models_out

    seeds = args.seeds or [None]
    models_out = run_models(seeds[0])
    out["models_seconds"] = time.perf_counter() - tic_all
    out["models"] = models_out
    out["evaluate"] = dataclasses.asdict(cfg)
    out["prepare_seconds"] = prepare_s
    out["wall_seconds"] = time.perf_counter() - wall
    out["tensorflow_imported"] = "tensorflow" in sys.modules
    print(f"gpucheck: {len(models_out)} models trained and evaluated in "
          f"{out['models_seconds']:.1f}s; whole check {out['wall_seconds']:.1f}s -> {args.json}")
    write_json(args.json, out)  # the timed pass is kept even if a later seed is cut off
    if len(seeds) > 1:
        by_seed = {seeds[0]: models_out}
        for seed in seeds[1:]:
            print(f"gpucheck: seed {seed}", flush=True)
            by_seed[seed] = run_models(seed)
        out["seeds"] = {str(seed): {n: {"nll": r["nll"], "active_units": r["active_units"]}
                                    for n, r in ms.items()} for seed, ms in by_seed.items()}
        # sample std (ddof 1) of the test NLL over seeds, per model: claim 1's tolerance
        out["nll_seed_std"] = {n: statistics.stdev(ms[n]["nll"] for ms in by_seed.values())
                               for n in models_out}
        print("gpucheck: NLL std over seeds " + ", ".join(
            f"{n} {v:.2f}" for n, v in out["nll_seed_std"].items()), flush=True)
        out["wall_seconds"] = time.perf_counter() - wall
        write_json(args.json, out)
    return out


if __name__ == "__main__":
    from .cli import run

    run(main, "gpucheck")
