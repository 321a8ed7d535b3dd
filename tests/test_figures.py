"""The report's figures: titled, labelled, and no legend over the points."""
import numpy as np

from vaelab import figures


def test_figures_are_labelled_and_legends_hide_no_points(monkeypatch, tmp_path):
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda path, fig: drawn.append(fig))
    series = {f"model{i} {part}": {1: 1.0 + i, 5: 0.5 + i, 50: 0.2 + i}
              for i in range(3) for part in ("encoder", "decoder")}
    figures.lines_vs_k(tmp_path / "snr.png", series, "mean gradient SNR", "SNR", logy=True)
    figures.histograms(tmp_path / "h.png", {"vae": np.array([0.2, 0.3, 0.5])}, "std", "Width")
    figures.reconstructions(tmp_path / "r.png", np.zeros((3, 784)), {"vae": np.zeros((3, 784))})
    lines, hist, recon = (fig.axes[0] for fig in drawn)
    for ax in (lines, hist):
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert recon.get_title()
    drawn[0].canvas.draw()
    legend, axes = lines.get_legend().get_window_extent(), lines.get_window_extent()
    assert legend.x0 >= axes.x1, "the legend sits beside the axes, not over the points"


def test_convergence_figure(tmp_path):
    import numpy as np

    from vaelab import figures
    passes = np.arange(1, 11)
    figures.convergence(tmp_path / "c.png", {"iwae": (passes, -(120 - np.log(passes))),
                                             "vae": (passes, -(125 - np.log(passes)))},
                        {"iwae": (10, 95.0)}, {"iwae": 84.78}, k_valid=50)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
