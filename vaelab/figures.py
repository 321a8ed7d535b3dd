"""Pictures: digit grids and the report's plots, written as PNG files atomically."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import atomic_file


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display in CI or on a server
    import matplotlib.pyplot as plt

    return plt


def grid(images: np.ndarray, cols: int | None = None, pad: int = 1) -> np.ndarray:
    """[N, 784] or [N, 28, 28] values in [0, 1] -> one [H, W] image, row by row."""
    images = np.asarray(images, dtype=np.float32).reshape(-1, 28, 28)
    n = len(images)
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    # mid-grey padding separates tiles whatever the colour map
    out = np.full((rows * (28 + pad) + pad, cols * (28 + pad) + pad), 0.5, np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        out[pad + r * (28 + pad):pad + r * (28 + pad) + 28,
            pad + c * (28 + pad):pad + c * (28 + pad) + 28] = img
    return out


def save_grid(path: str | Path, images: np.ndarray, cols: int | None = None,
              title: str | None = None) -> None:
    plt = _pyplot()
    if title is None:
        with atomic_file(path) as f:
            plt.imsave(f, grid(images, cols), cmap="gray_r", vmin=0.0, vmax=1.0, format="png")
        return
    fig, ax = plt.subplots(figsize=(4, 4.3))
    ax.imshow(grid(images, cols), cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(title, fontsize=10)
    ax.axis("off")
    save_figure(path, fig)


def save_figure(path: str | Path, fig) -> None:
    plt = _pyplot()
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def side_by_side(path, grids: dict[str, np.ndarray], title: str) -> None:
    """One panel per model, each a digit grid: `grids` maps name -> [N, 784] in [0, 1]."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(grids), figsize=(3 * len(grids), 3.4), squeeze=False)
    for ax, (name, images) in zip(axes[0], grids.items()):
        ax.imshow(grid(images), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    save_figure(path, fig)


def reconstructions(path, original: np.ndarray, recons: dict[str, np.ndarray]) -> None:
    """Top row the test digits, then one row per model."""
    rows = {"test digits": original, **recons}
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(len(original) * 0.6, 0.75 * len(rows)),
                             squeeze=False)
    for ax, (name, images) in zip(axes[:, 0], rows.items()):
        ax.imshow(grid(images, cols=len(images)), cmap="gray_r", vmin=0, vmax=1)
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("Reconstructions: E[x|z] at the posterior mean, under the test digits")
    save_figure(path, fig)


def histograms(path, values: dict[str, np.ndarray], xlabel: str, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    finite = [v[np.isfinite(v)] for v in values.values()]
    bins = np.linspace(0, max(1.0, max((v.max() for v in finite if v.size), default=1.0)), 41)
    for (name, _), v in zip(values.items(), finite):
        ax.hist(v, bins=bins, histtype="step", label=name, density=True)
    ax.axvline(1.0, color="grey", ls="--", lw=1, label="prior std")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    save_figure(path, fig)


def lines_vs_k(path, series: dict[str, dict[int, float]], ylabel: str, title: str,
               logy: bool = False) -> None:
    """series: label -> {k: value}; k on a log axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, pts in series.items():
        ks = sorted(pts)
        ax.plot(ks, [pts[k] for k in ks], marker="o", label=label)
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("k (samples)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    # outside the axes: inside, a legend of many series hid some of the points
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    save_figure(path, fig)


def snr_vs_k(path, results: dict[str, dict], title: str) -> None:
    """Median per-parameter gradient SNR against K, log-log: one panel per group (encoder,
    decoder), a line per model and estimator. results: label -> vaelab.snr.measure()'s
    {estimator: {group: {"k": {K: summary}, "slope": s}}}."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for ax, group in zip(axes, ("encoder", "decoder")):
        for label, by_est in results.items():
            for est, groups in by_est.items():
                r = groups[group]
                ks = sorted(r["k"])
                ax.plot(ks, [r["k"][k]["median"] for k in ks], marker="o",
                        label=f"{label} {est} (slope {r['slope']:+.2f})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("K (importance samples)")
        ax.set_ylabel("median per-parameter SNR")
        ax.set_title(group)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    save_figure(path, fig)


def convergence(path, curves: dict[str, tuple[np.ndarray, np.ndarray]],
                test_nll: dict[str, tuple[int, float]], published: dict[str, float],
                k_valid: int, end_passes: int = 3280) -> None:
    """One panel per model: -(validation L_k) against passes on a log axis, the test NLL at the
    pass it was measured, the published NLL of the same row and the end of the published
    schedule, so a reader sees how far each row is from where the literature stopped.
    Measured points only: nothing is extrapolated."""
    plt = _pyplot()
    names = list(curves)
    cols = min(3, len(names)) or 1
    rows = -(-len(names) // cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        passes, valid_lk = curves[name]
        ax.plot(passes, -np.asarray(valid_lk), lw=1.2, label=f"valid -L_{k_valid}")
        if name in test_nll:
            at, nll = test_nll[name]
            ax.plot([at], [nll], "o", color="C3", label=f"test NLL {nll:.2f}")
        if name in published:
            ax.axhline(published[name], color="k", ls="--", lw=0.8,
                       label=f"Burda et al. {published[name]:.2f}")
        ax.axvline(end_passes, color="grey", ls=":", lw=0.8, label=f"{end_passes:,} passes")
        ax.set_xscale("log")
        ax.set_xlim(0.8, end_passes * 1.3)
        lows = [v for v in (published.get(name), test_nll.get(name, (0, None))[1]) if v]
        top = float(np.percentile(-np.asarray(valid_lk), 90)) if len(valid_lk) else 100.0
        ax.set_ylim(min([float(np.min(-np.asarray(valid_lk)))] + lows) - 1, top + 1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("passes over the training digits")
        ax.set_ylabel("nats (lower is better)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("Convergence: how far each row is from the end of Burda et al.'s schedule",
                 fontsize=10)
    fig.tight_layout()
    save_figure(path, fig)
