"""DVC stage `prepare`: the configured data source -> train/valid/test .npz files."""

from vaelab import cli, data
from vaelab.config import load_params


def main():
    p = cli.parser(__doc__)
    p.add_argument("--out", default="data/prepared")
    args = p.parse_args()
    params = load_params(args.params)
    sizes = data.prepare(params.data, args.out)
    print(f"prepare: {params.data.source} -> {args.out}: "
          + ", ".join(f"{part} {n}" for part, n in sizes.items()))


if __name__ == "__main__":
    cli.run(main, "prepare")
