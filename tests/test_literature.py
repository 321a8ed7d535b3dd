"""The published table and the matching of measured rows to it."""
from vaelab import literature, registry


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
             updates=literature.updates(121, 50_000, 100), schedule="burda, 5 stages",
             device="2-core CPU")
    lines = literature.table([m, dict(m, name="prior", family="prior")])
    row = [line for line in lines if line.startswith("| iwae ")]
    assert len(row) == 1 and "| +5.50 |" in row[0] and "60,500" in row[0]
    assert not any(line.startswith("| prior ") for line in lines)  # no published row
    assert literature.table([dict(m, family="prior")]) == []
    assert literature.updates(1, 101, 20) == 6
