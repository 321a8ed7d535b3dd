"""DVC stage `evaluate@<name>`: measure one trained model on the fixed test set, write its
record (metrics/eval/<name>.json, vaelab.measurements) and the arrays of the report's
figures, and log the test metrics into the MLflow run that trained it."""
import time
from pathlib import Path

from vaelab import cli
from vaelab.cli import heartbeat as _heartbeat
from vaelab.config import clipped_prior_k, load_params
from vaelab.cost import check_cost, evaluate_cost
from vaelab.quiet import use_backend


def heartbeat(what: str, expected_s: float, every_s: float = 30.0):
    return _heartbeat("evaluate", what, expected_s, every_s)


def main():
    p = cli.parser(__doc__)
    p.add_argument("--model", required=True, help="the model folder, e.g. models/vae")
    p.add_argument("--data", default="data/prepared")
    p.add_argument("--out", help="the record (default metrics/eval/<name>.json)")
    p.add_argument("--arrays", help="the figures' arrays (default measurements/<name>.npz)")
    args = p.parse_args()
    params = load_params(args.params)
    use_backend(params.train.backend)  # before anything imports Keras
    from vaelab import data, evaluate, measurements, models, tracking
    cfg, folder = params.evaluate, Path(args.model)
    name = folder.name
    check_cost(params, warn_as="evaluate")
    client, _ = tracking.connect(params.mlflow.experiment)  # fail before any work
    # A missing, damaged or failed (diverged, interrupted) model stops it here.
    log = tracking.RunLogger.of_model(folder, client)
    m = models.VAE.from_folder(folder, jit=cfg.jit)
    test = data.load_prepared(args.data, "test")
    n_train = len(data.load_prepared(args.data, "train")["y"])
    if clipped_prior_k(cfg) != cfg.prior_k:
        print(f"evaluate: evaluate.prior_k {list(cfg.prior_k)} clipped to evaluate.k={cfg.k}: "
              f"{list(clipped_prior_k(cfg))}")
    print(f"evaluate: {name}: L_{cfg.k} on {min(cfg.n_test, len(test['y']))} test digits, "
          "gradient SNR, prior sampling...", flush=True)
    tic = time.perf_counter()
    with heartbeat(name, evaluate_cost(params)[1] / len(params.models)):
        record, arrays = evaluate.measure(m, test, n_train, cfg, log.describe())
    measurements.write_arrays(args.arrays or f"measurements/{name}.npz", **arrays)
    measurements.write(args.out or measurements.path_for("metrics/eval", name), record)
    r = record.metrics
    print(f"evaluate: {name}: NLL {r['nll']:.2f}, ELBO {r['elbo']:.2f}, "
          f"{r['active_units']} active units, L_{cfg.k} at {r['eval_images_per_s']:.0f} "
          f"images/s, {time.perf_counter() - tic:.0f}s", flush=True)
    measurements.log_to_run(log, record, cfg)


if __name__ == "__main__":
    cli.run(main, "evaluate")
