"""DVC stage `train@<name>`: train one entry of `models:` and log it as one MLflow run."""
from vaelab import cli
from vaelab.config import load_params
from vaelab.quiet import use_backend


def main():
    p = cli.parser(__doc__)
    p.add_argument("--name", required=True, help="a key of `models:` in params.yaml")
    p.add_argument("--data", default="data/prepared")
    p.add_argument("--out", help="model folder (default: models/<name>)")
    p.add_argument("--metrics", help="final figures (default: metrics/train/<name>.json)")
    p.add_argument("--curve", help="per-epoch CSV (default: metrics/curves/<name>.csv)")
    args = p.parse_args()
    params = load_params(args.params)
    [name] = cli.model_names(params, [args.name])
    use_backend(params.models[name].train.backend)  # before anything imports Keras
    from vaelab import fit

    out = fit.Outputs.default(name, args.out, args.metrics, args.curve)
    result, figures = fit.train_model(params, name, args.data, out, __file__)
    print(f"train@{name}: valid bound {result.kept['valid_bound']:.2f} nats, "
          f"{figures['seconds']:.0f}s, {result.samples_per_s:,.0f} samples/s -> {out.model}")


if __name__ == "__main__":
    cli.run(main, "train")
