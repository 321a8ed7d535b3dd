"""The measurement record between evaluate@<name> and the report: written and read back
exactly, refused in one line when damaged or of another version, judged together only on
one data split and one estimator; and scripts/evaluate_together.py over records."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vaelab import measurements
from vaelab.config import EvaluateConfig, load_params
from vaelab.measurements import Measurements, MeasurementsError

ROOT = Path(__file__).resolve().parents[1]
SPLIT = {f"data.{k}": v for k, v in
         dataclasses.asdict(load_params(ROOT / "params.yaml").data).items()}


def record(name="vae", objective="elbo_analytic", k=1, nll=100.0, **data) -> Measurements:
    """A record as evaluate.measure makes one, with numbers that are not round in binary."""
    cfg = EvaluateConfig(k=20, n_test=40, snr_k=(1, 5), prior_k=(1, 10))
    snr = {"standard": {g: {"k": {kk: {"median": 0.1 * kk + 1 / 3, "q1": 0.1, "q3": 0.7,
                                       "share_below_1": 0.5, "share_dropped": 0.0,
                                       "n_params": 12}
                                  for kk in cfg.snr_k}, "slope": -0.4, "slope_rms": 0.2}
                        for g in ("encoder", "decoder")}}
    metrics = {"nll": nll + 1 / 7, "elbo": -nll - 6.123456789, "active_units": 15,
               "gap_elbo_nll": 6.0, "own_bound": -nll - 6.5, "posterior_std_median": 0.05,
               "posterior_std_q1": 0.03, "posterior_std_q3": 0.08, "elbo_std_one_sample": 2.0,
               "rate": 20.0, "distortion": 86.0, "eval_images_per_s": 70.0}
    info = {"objective": objective, "k": k, "train.epochs": 200, "epochs_trained": 200,
            **SPLIT, **data}
    return Measurements(name=name, model=info, metrics=metrics, snr=snr,
                        prior_vs_posterior={1: (-300.0, -106.0), 10: (-200.1, -101.2)},
                        nll_ref_by="NLL, L_20", evaluate=measurements.settings(cfg),
                        n_test=40, n_train=4000, run={"run_id": "r", "experiment_id": "1"})


def test_a_record_reads_back_exactly(tmp_path):
    r = record()
    path = tmp_path / "vae.json"
    measurements.write(path, r)
    back = measurements.read(path)
    assert back == r  # every float to the last digit, int keys and tuples restored
    assert back.results()["_prior_vs_posterior"][10] == (-200.1, -101.2)
    assert back.results()["nll"] == 100.0 + 1 / 7
    assert "nll_seed_std" not in back.evaluate  # the report's, not a measurement's


@pytest.mark.parametrize("damage,expect", [
    (lambda p: p.write_text('{"schema_version": 1, "na'), "damaged (JSONDecodeError)"),
    (lambda p: p.write_text(p.read_text().replace('"schema_version": 1',
                                                   '"schema_version": 0')),
     "schema_version 0, this version reads 1"),
    (lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items()
                                        if k != "metrics"})), "missing metrics"),
    (lambda p: p.write_text(p.read_text().replace('"n_test": 40', '"n_test": "40"')),
     "n_test not as written"),
    (lambda p: p.unlink(), "missing;"),
])
def test_a_damaged_or_other_version_record_is_one_line_naming_the_fix(tmp_path, damage, expect):
    path = tmp_path / "iwae.json"
    measurements.write(path, record("iwae"))
    damage(path)
    with pytest.raises(MeasurementsError) as e:
        measurements.read(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and expect in msg
    assert "dvc repro evaluate@iwae" in msg


def test_records_of_another_split_or_estimator_are_not_judged_together():
    ok = {"vae": record(), "iwae": record("iwae", "iwae", 5)}
    assert measurements.check_together(ok, SPLIT) == ok
    other = {**ok, "iwae": record("iwae", "iwae", 5, **{"data.seed": 7})}
    with pytest.raises(MeasurementsError, match="iwae: measured on a model trained on"):
        measurements.check_together(other, SPLIT)
    with pytest.raises(MeasurementsError, match="data.seed"):  # even with no split given
        measurements.check_together(other)
    looser = dataclasses.replace(ok["iwae"], evaluate={**ok["iwae"].evaluate, "k": 10})
    with pytest.raises(MeasurementsError, match="iwae: measured with evaluate"):
        measurements.check_together({**ok, "iwae": looser})


def test_arrays_missing_or_damaged_name_the_stage(tmp_path):
    path = tmp_path / "vae.npz"
    measurements.write_arrays(path, samples=np.ones((2, 784), np.float32))
    assert measurements.read_arrays(path, "sample@vae")["samples"].shape == (2, 784)
    path.write_bytes(b"not a zip")
    with pytest.raises(MeasurementsError, match=r"damaged.*dvc repro -f sample@vae"):
        measurements.read_arrays(path, "sample@vae")
    with pytest.raises(MeasurementsError, match="missing; rerun `dvc repro evaluate@x`"):
        measurements.read_arrays(tmp_path / "x.npz", "evaluate@x")


def run_together(*args):
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's vaelab, as pytest.ini does
    return subprocess.run([sys.executable, "scripts/evaluate_together.py", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def test_evaluate_together_judges_records_and_refuses_another_split(tmp_path):
    for r in (record(), record("vae_mc", "elbo_mc", nll=100.4),
              record("iwae", "iwae", 50, nll=97.0)):
        measurements.write(tmp_path / f"{r.name}.json", r)
    out = run_together(*(tmp_path / f"{n}.json" for n in ("vae", "vae_mc", "iwae")),
                       "--json", tmp_path / "all.json")
    assert out.returncode == 0, out.stderr
    assert "claim 1: " in out.stdout and "claim 8: " in out.stdout
    assert "vae (k=50)" not in out.stdout and "iwae (k=50): NLL 97.14" in out.stdout
    assert set(json.loads((tmp_path / "all.json").read_text())) == {"vae", "vae_mc", "iwae"}
    measurements.write(tmp_path / "far.json", record("far", **{"data.test_size": 123}))
    out = run_together(tmp_path / "vae.json", tmp_path / "far.json")
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("evaluate_together: error: far: measured on a model trained on")
