"""Draw digits from one trained model's prior and save a grid; DVC stage `sample@<name>`.

By hand it writes the grid and nothing else: `--count` and `--seed` override params.yaml's
`sample:`. The pipeline passes `--log` (the grid and sample.* params into the model's
training run) and `--arrays` (the report's digits)."""
import dataclasses
from pathlib import Path

from vaelab import cli
from vaelab.config import load_params, sample_overrides
from vaelab.quiet import use_backend

REPORT_GRID = 64  # digits per model in the report's side-by-side figure


def main():
    p = cli.parser(__doc__)
    p.add_argument("--model", required=True, help="the model folder, e.g. models/vae")
    p.add_argument("--count", type=int, help="digits to draw (default: params.yaml sample.n)")
    p.add_argument("--seed", type=int, help="their seed (default: params.yaml sample.seed)")
    p.add_argument("--out", help="the grid (default samples/<name>.png)")
    p.add_argument("--arrays", help="also keep the report's digits here (the pipeline's "
                   "measurements/<name>.samples.npz)")
    p.add_argument("--log", action="store_true", help="log the grid and sample.* params into "
                   "the model's MLflow training run")
    args = p.parse_args()
    params = load_params(args.params)
    cfg = sample_overrides(params.sample, args.count, args.seed)
    use_backend(params.train.backend)  # before anything imports Keras
    from vaelab import evaluate, figures, measurements, models, tracking
    from vaelab.cost import check_cost
    check_cost(dataclasses.replace(params, sample=cfg), warn_as="sample")
    folder = Path(args.model)
    name = folder.name
    log = None
    if args.log:
        # the model's training run first: a bad one stops the stage before any grid is
        # written or logged
        client, _ = tracking.connect(params.mlflow.experiment)
        log = tracking.RunLogger.of_model(folder, client)
    m = models.VAE.from_folder(folder)
    path = Path(args.out or f"samples/{name}.png")
    figures.save_grid(path, evaluate.prior_samples_of(m, cfg.n, cfg.seed),
                      title=f"{name}: {cfg.n} samples from the prior, decoded (E[x|z])")
    if args.arrays:
        measurements.write_arrays(args.arrays, samples=evaluate.prior_samples_of(
            m, min(REPORT_GRID, cfg.n), cfg.seed))
    if log is not None:
        log.artifact(path, name="samples.png")  # one name in every run: compare view
        log.params({f"sample.{k}": v for k, v in vars(cfg).items()})
    print(f"sample: {cfg.n} digits from {name}'s prior (seed {cfg.seed}) -> {path}"
          + (", logged to its MLflow run" if log is not None else ""))


if __name__ == "__main__":
    cli.run(main, "sample")
