"""What every stage script shares: argument parsing, and user errors as one line."""
from __future__ import annotations

import argparse
import sys

from .config import ParamsError, UserError


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p


def run(main, stage: str) -> None:
    """Call main(); a UserError becomes `<stage>: error: <message>` and exit status 2, Ctrl-C
    exit status 130. Anything else is a bug and keeps its traceback."""
    try:
        main()
    except UserError as e:
        print(f"{stage}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{stage}: interrupted; rerun `dvc repro` to resume from the last checkpoint",
              file=sys.stderr)
        sys.exit(130)


def model_names(params, names: list[str] | None) -> list[str]:
    if not names:
        return list(params.models)
    for n in names:
        if n not in params.models:
            raise ParamsError(f"{params.path}: models.{n}: no such model; "
                              f"defined: {', '.join(params.models)}")
    return names

