"""What a setting will cost, known before anything runs: refused when it cannot fit, warned
when it takes hours. Read by the `check` stage (no TensorFlow) and by the stages themselves.
"""
from __future__ import annotations

from . import cli
from .config import ParamsError


# Importance samples per second for the default network on 2 CPU cores (README, Speed:
# 73 test images/s at k=5000): for the expected time of costly settings only.
SAMPLES_PER_S = 365_000
WARN_SECONDS = 3600


def evaluate_cost(params) -> tuple[int, float]:
    """(bytes, seconds) of the evaluate stage's log-weights: [k, n_test] float32 for
    posterior sampling plus [max prior_k, n_test] for prior sampling, for every model."""
    cfg = params.evaluate
    samples = cfg.n_test * (cfg.k + max(cfg.prior_k))
    return 4 * samples, len(params.models) * samples / SAMPLES_PER_S


def check_cost(params, warn_as: str | None = None) -> None:
    """Refuse an evaluate.k whose log-weights cannot fit in memory (here, before any
    training, and again in evaluate); with `warn_as`, warn about one that takes hours."""
    need, seconds = evaluate_cost(params)
    have = cli.available_bytes()
    cfg = params.evaluate
    if have is not None and need > have / 2:
        raise ParamsError(
            f"{params.path}: evaluate.k: {cfg.k:,} importance samples x {cfg.n_test} test "
            f"digits hold {need / 2**30:,.1f} GiB of log-weights, more than half the "
            f"{have / 2**30:.1f} GiB available; lower evaluate.k or evaluate.n_test")
    if warn_as and seconds > WARN_SECONDS:
        print(f"{warn_as}: warning: evaluate.k={cfg.k:,} on {cfg.n_test} digits x "
              f"{len(params.models)} models takes about {seconds / 3600:,.1f} hours on 2 CPU "
              "cores (default: about 1 minute per model)", flush=True)
