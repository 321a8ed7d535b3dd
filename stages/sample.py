"""DVC stage `sample@<name>`: draw digits from one trained model's prior, save a grid, log
it into the model's training run, and keep the report's grid as an array."""
from pathlib import Path

from vaelab import cli
from vaelab.config import load_params
from vaelab.quiet import use_backend

REPORT_GRID = 64  # digits per model in the report's side-by-side figure


def main():
    p = cli.parser(__doc__)
    p.add_argument("--model", required=True, help="the model folder, e.g. models/vae")
    p.add_argument("--out", help="the grid (default samples/<name>.png)")
    p.add_argument("--arrays", help="the report's digits (default "
                   "measurements/<name>.samples.npz)")
    args = p.parse_args()
    params = load_params(args.params)
    use_backend(params.train.backend)  # before anything imports Keras
    from vaelab import evaluate, figures, measurements, tracking
    folder, cfg = Path(args.model), params.sample
    name = folder.name
    client, _ = tracking.connect(params.mlflow.experiment)
    # the model's files and training run first: a bad one stops the stage before any
    # grid is written or logged
    log = tracking.RunLogger.of_model(folder, client)
    m = evaluate.Loaded.from_folder(folder)
    path = Path(args.out or f"samples/{name}.png")
    figures.save_grid(path, evaluate.prior_samples_of(m, cfg.n, cfg.seed),
                      title=f"{name}: {cfg.n} samples from the prior, decoded (E[x|z])")
    measurements.write_arrays(args.arrays or f"measurements/{name}.samples.npz",
                              samples=evaluate.prior_samples_of(m, min(REPORT_GRID, cfg.n),
                                                                cfg.seed))
    log.artifact(path, name="samples.png")  # one name in every run: compare view
    log.params({f"sample.{k}": v for k, v in vars(cfg).items()})
    print(f"sample: {cfg.n} digits from {name}'s prior -> {path}")


if __name__ == "__main__":
    cli.run(main, "sample")
