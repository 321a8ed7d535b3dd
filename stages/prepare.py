"""DVC stage `prepare`: the configured data source -> train/valid/test .npz files."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for vaelab

from vaelab import cli, data  # noqa: E402
from vaelab.config import load_params  # noqa: E402


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
