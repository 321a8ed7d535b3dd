"""The published table and the matching of measured rows to it."""
from vaelab import literature, registry
from vaelab.config import updates


def test_every_row_is_unique_and_k1_rows_agree():
    keys = [(r.layers, r.family, r.k) for r in literature.TABLE_1]
    assert len(keys) == len(set(keys)) == 12
    for layers in (1, 2):
        # IWAE with one sample is the VAE: the paper prints the same model twice
        assert literature.published(layers, "iwae", 1) == literature.published(layers, "elbo", 1)
        # Burda's shape, as the report's claims read it: IWAE at or below the VAE for each
        # k, falling with k; two layers at or below one
        for k in (5, 50):
            assert literature.published(layers, "iwae", k).nll < \
                literature.published(layers, "elbo", k).nll
        assert literature.published(layers, "iwae", 50).nll < \
            literature.published(layers, "iwae", 5).nll
    assert all(len(r.active_units) == r.layers for r in literature.TABLE_1)


def test_matching_follows_the_registry_families():
    families = {s.family for s in registry.OBJECTIVES.values()}
    assert {"elbo", "iwae"} <= families
    assert literature.published(1, "prior", 50) is None
    assert literature.published(1, "iwae", 10) is None
    assert literature.published(1, "elbo", 50).nll == 86.35


def test_table_rows_state_the_gap_and_the_budget():
    m = dict(name="iwae", layers=1, family="iwae", k=50, nll=90.28, active_units=[31],
             data="MNIST 50,000", passes=121, batch_size=100,
             updates=updates(121, 50_000, 100), schedule="burda, 5 stages",
             device="2-core CPU")
    lines = literature.table([m, dict(m, name="prior", family="prior")])
    row = [line for line in lines if line.startswith("| iwae ")]
    assert len(row) == 1 and "| +5.50 |" in row[0] and "60,500" in row[0]
    assert not any(line.startswith("| prior ") for line in lines)  # no published row
    assert literature.table([dict(m, family="prior")]) == []
    assert updates(1, 101, 20) == 6


def test_the_report_sets_measured_rows_beside_the_literature(tmp_path, monkeypatch):
    """From measurement records: the rows that have a published counterpart, their budget
    from the model card, the gap, and the convergence figure from the curves."""
    import numpy as np
    from test_measurements import record

    from vaelab import measurements, report
    extra = {"train.batch_size": 100, "train.schedule": "burda", "train.schedule_stages": 5,
             "train.learning_rate": 0.001, "train.valid_k": 50, "device": "cpu:0 (cpu)"}
    recs = {r.name: r for r in (
        record("vae", "elbo_analytic", 1, nll=90.0, **extra),
        record("iwae", "iwae", 50, nll=88.0, **extra),
        record("prior", "prior_mc", 50, nll=120.0, **extra),
        record("dreg", "iwae", 50, nll=87.5, estimator="dreg", **extra),
        record("iwae_k2", "iwae", 2, nll=89.0, **extra))}
    j = report.judge(recs)
    rows = {r["name"]: r for r in report.literature_rows(j.results, j.infos, j.n_train)}
    assert set(rows) == {"vae", "iwae"}  # none for eq. (7), for DReG, or for k = 2
    assert rows["iwae"]["updates"] == 200 * 40 and rows["iwae"]["schedule"].startswith("burda, 5")
    text = "\n".join(report.literature_section(j.results, j.infos,
                                               {"k": 20, "n_test": 40, "n_train": 4000}))
    assert "| iwae | IWAE k=50, 1 layer | 88.14 | 84.78 | +3.36 |" in text
    assert "cpu:0 (cpu)" in text and "3,280" in text
    # the curves become the convergence figure; a run without curves has none
    path = tmp_path / "iwae.csv"
    path.write_text("epoch,valid_Lk\n1,-150\n2,-120.5\n3,-110.25\n")
    curve = measurements.read_curve(path)
    np.testing.assert_array_equal(curve["valid_Lk"], [-150, -120.5, -110.25])
    assert measurements.read_curve(tmp_path / "none.csv") == {}
    assert report._convergence(tmp_path, j, {"iwae": curve, "iwae_k2": curve}
                               )[0][1] == "convergence.png"
    assert (tmp_path / "convergence.png").exists()
    assert report._convergence(tmp_path / "x", j, {}) == []
    # train.valid_every: epochs without validation are nan cells, NaN read back, no points
    from vaelab import figures, fit
    history = [{"epoch": e, "train_bound": -200.0 + e,
                **({"valid_Lk": -150.0 + e} if e in (1, 2, 4) else {})} for e in range(1, 5)]
    text = fit.curve_csv(history)
    assert text.splitlines()[3] == "3,-197,nan"  # the column kept, no value
    path.write_text(text)
    curve = measurements.read_curve(path)
    np.testing.assert_array_equal(curve["valid_Lk"], [-149, -148, np.nan, -146])
    drawn = {}
    real = figures.convergence

    def spy(out, curves, *a, **kw):
        drawn.update(curves)
        return real(out, curves, *a, **kw)

    monkeypatch.setattr(figures, "convergence", spy)
    assert report._convergence(tmp_path / "y", j, {"iwae": curve})
    np.testing.assert_array_equal(drawn["iwae"][0], [1, 2, 4])
    np.testing.assert_array_equal(drawn["iwae"][1], [-149, -148, -146])
