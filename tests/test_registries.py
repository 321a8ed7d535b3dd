"""The registries of data sources, gradient estimators and claims: adding an entry (plus its
loader or judge) is all a new source or claim takes, and everything that lists them reads the
registry. (Objectives: tests/test_registry.py.)"""
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_evaluate import fake_results

from stages.check import source_files
from vaelab import config, data, registry, report, snr
from vaelab.config import ParamsError, parse_params

README = Path(__file__).resolve().parents[1] / "README.md"
MODELS = {"m": {"objective": "iwae", "k": 5}}


# --- data sources ------------------------------------------------------------------------

# the README's example
CSV = registry.SourceSpec("csv", "a file of 784 comma-separated grey values 0..255 a row",
                          path="file", path_what="a .csv file")


def _load_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    x = np.loadtxt(path, delimiter=",", dtype=np.uint8).reshape(-1, *data.IMAGE_SHAPE)
    return x, np.zeros(len(x), np.int64)  # no labels


@pytest.fixture
def csv_source(monkeypatch):
    monkeypatch.setitem(registry.SOURCES, "csv", CSV)
    monkeypatch.setitem(data.LOADERS, "csv", data.Loader(_load_csv))


def test_every_source_has_its_loader_and_only_published_ones_a_split():
    assert set(data.LOADERS) == set(registry.SOURCES)
    assert {n for n, ld in data.LOADERS.items() if ld.split} == {"mnist", "fashion_mnist", "idx"}
    for name, spec in registry.SOURCES.items():
        assert spec.path in ("", "file", "folder") and bool(spec.path) == bool(spec.path_what)


def test_a_new_source_is_one_entry_and_its_loader(csv_source, tmp_path):
    with pytest.raises(ParamsError, match=r"^params.yaml: data.path: must name a \.csv file "
                                          r"when data.source is csv, got None$"):
        parse_params({"data": {"source": "csv"}})
    with pytest.raises(data.DataError, match="data.path: must name a .csv file"):
        data.load_source("csv")
    digits = np.random.default_rng(0).integers(0, 256, (60, 784))
    np.savetxt(tmp_path / "d.csv", digits, fmt="%d", delimiter=",")
    cfg = parse_params({"data": {"source": "csv", "path": str(tmp_path / "d.csv"),
                                 "valid_size": 10, "test_size": 10}, "models": MODELS}).data
    sizes = data.prepare(cfg, tmp_path / "out", say=lambda _: None)
    assert sizes == {"train": 40, "valid": 10, "test": 10}
    x = np.concatenate([data.load_prepared(tmp_path / "out", p)["x"] for p in data.PARTS])
    assert sorted(map(bytes, x.reshape(60, -1))) == sorted(map(bytes, digits.astype(np.uint8)))
    assert list(source_files("csv", str(tmp_path / "d.csv"))) == ["d.csv"]  # check's hashes
    with pytest.raises(data.DataError, match=r"data.path: .*absent: no such file \(data.source "
                                             r"is csv\)"):
        source_files("csv", str(tmp_path / "absent"))


def test_unknown_source_lists_the_registry(csv_source):
    with pytest.raises(ParamsError, match=r"data.source: must be one of mnist5k, .*, npz, csv"):
        parse_params({"data": {"source": "cvs"}})
    with pytest.raises(data.DataError, match=r"data.source: must be one of .*npz, csv"):
        data.load_source("cifar10")


def test_offline_alternatives_come_from_the_registry(csv_source):
    assert registry.offline_sources() == ["mnist5k", "idx", "npz", "csv"]
    text = data._or([data._offline(s) for s in registry.offline_sources()])
    assert "'data.source: csv' with data.path naming a .csv file (a file of 784" in text


def test_readme_table_lists_every_source():
    section = README.read_text().split("## Other data")[1].split("\n## ")[0]
    listed = [n for row in re.findall(r"^\| (`.*?) \|", section, re.M)
              for n in re.findall(r"`(\w+)`", row)]
    assert listed == list(registry.SOURCES)


def test_validating_params_starts_no_tensorflow():
    code = ("import sys, stages.check, vaelab.config, vaelab.data, vaelab.registry, "
            "vaelab.report; bad = {'tensorflow', 'keras', 'jax'} & set(sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parents[1])


# --- gradient estimators -----------------------------------------------------------------

def test_estimators_are_what_config_snr_and_report_read():
    assert registry.IWAE_TYPE == tuple(registry.ESTIMATORS) == registry.ESTIMATOR.choices
    for name, spec in registry.ESTIMATORS.items():
        assert spec.changes in ("", "encoder") and spec.paper
        for group in snr.GROUPS:
            assert snr.theory(name, group) == spec.snr_slope.get(group)
            assert report.SNR_THEORY.get((name, group)) == spec.snr_slope.get(group)
        parse_params({"models": {"m": {"objective": "iwae", "k": 5, "estimator": name}},
                      "evaluate": {"snr_estimators": [name]}})
    # the estimator that changes nothing is the bound's own gradient
    assert [e for e, s in registry.ESTIMATORS.items() if not s.changes] == ["standard"]


def test_an_unregistered_estimator_is_refused():
    with pytest.raises(ParamsError, match="models.m.estimator: must be one of standard, stl, dreg"):
        parse_params({"models": {"m": {"objective": "iwae", "k": 5, "estimator": "rws"}}})


# --- claims --------------------------------------------------------------------------------

def test_claims_select_models_by_capabilities_the_registry_has():
    fields = {f.name for f in dataclasses.fields(registry.ObjectiveSpec)} | {"plain_iwae"}
    for c in report.CLAIMS.values():
        assert c.number and c.statement and callable(c.judge)
        for needs in c.needs:
            assert set(needs) <= fields, (c.number, needs)
            assert any(registry.has({"objective": o}, **needs) for o in registry.OBJECTIVES), \
                (c.number, needs)  # a capability no objective has would never be measured
        assert set(c.inputs) <= {"snr_k", "seed_std"}


RULE_9 = "every IWAE model has an active unit"


def claim_9(results, infos) -> report.Claim:  # the README's example
    iw = report._select(infos, **report.PLAIN_IWAE)
    if not iw:
        return report._claim(9, RULE_9, "needs an iwae model", report.UNMEASURED)
    ok = all(results[n]["active_units"] > 0 for n in iw)
    return report._claim(9, RULE_9, ", ".join(f"{n}: {results[n]['active_units']}" for n in iw),
                         report.HOLDS if ok else report.FAILS)


def test_a_new_claim_is_one_entry_and_its_judge(monkeypatch):
    monkeypatch.setitem(report.CLAIMS, 9, report.ClaimSpec(
        9, "The IWAE keeps units alive", claim_9, (report.PLAIN_IWAE,)))
    results, infos = fake_results()
    claims = report.all_claims(results, infos, (1, 5, 50))
    assert [c.number for c in claims] == list(range(1, 10))
    text = report.render(results, infos, claims, {
        "k": 5000, "source": "mnist5k", "n_train": 4000, "n_test": 500, "snr_k": (1, 5, 50),
        "figures": []})
    # one-layer models only (all_layers False): iwae, not iwae_2l
    assert ("### 9. The IWAE keeps units alive: **HOLDS**\n\n- Rule: every IWAE model has an "
            "active unit.\n- Measured: iwae: 18.\n") in text
    j = report.Judgement(results, infos, claims, ["short"], config.EvaluateConfig(), 500, 4000)
    assert j.verdicts()["claim_9"] == "HOLDS (indicative)"  # verdicts.json and MLflow tags
    results["iwae"]["active_units"] = 0
    assert report.all_claims(results, infos, (1, 5, 50))[-1].verdict == report.FAILS
    del results["iwae"], infos["iwae"]
    assert report.all_claims(results, infos, (1, 5, 50))[-1].verdict == report.UNMEASURED
