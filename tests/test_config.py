"""vaelab.config: the shipped defaults parse, per-model overrides resolve, and every user
mistake in params.yaml becomes one ParamsError line `file: key.path: what is allowed[, got X]`."""
from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import yaml

from vaelab.config import ParamsError, RunConfig, clipped_prior_k, load_params, parse_params

FILE = "my/params.yaml"

DEFAULTS = {
    "data": {"source": "mnist5k", "path": None, "binarize": "dynamic", "valid_size": 500,
             "test_size": 500, "seed": 0},
    "model": {"latent": 50, "hidden": [200, 200], "activation": "tanh", "decoder": "bernoulli"},
    "train": {"epochs": 100, "batch_size": 100, "learning_rate": 0.001, "seed": 0},
    "models": {
        "vae": {"objective": "elbo_analytic", "k": 1},
        "vae_mc": {"objective": "elbo_mc", "k": 1},
        "iwae": {"objective": "iwae", "k": 50},
        "prior": {"objective": "prior_mc", "k": 50},
    },
    "evaluate": {"k": 5000, "n_test": 500},
    "sample": {"n": 100},
    "mlflow": {"experiment": "vae-iwae"},
}


def defaults() -> dict:
    return copy.deepcopy(DEFAULTS)


# ---------------------------------------------------------------------------------------
# valid configurations

def test_parse_keeps_what_the_file_says_and_normalizes_types():
    """Every key given comes through unchanged in value; lists become tuples, an integer
    learning rate a float; models keep their order and name; a run without overrides shares
    its sections."""
    raw = defaults()
    raw["train"]["learning_rate"] = 1
    p = parse_params(raw, FILE)
    assert p.path == FILE
    assert list(p.models) == list(raw["models"])
    for section in ("data", "model", "train", "evaluate", "sample", "mlflow"):
        got = dataclasses.asdict(getattr(p, section))
        for key, value in raw[section].items():
            assert got[key] == (tuple(value) if isinstance(value, list) else value), (section, key)
    assert isinstance(p.model.hidden, tuple)
    assert p.train.learning_rate == 1.0 and isinstance(p.train.learning_rate, float)
    for name, run in p.models.items():
        assert isinstance(run, RunConfig) and run.name == name
        assert (run.objective, run.k) == (raw["models"][name]["objective"], raw["models"][name]["k"])
        assert run.data == p.data and run.model == p.model and run.train == p.train


def _committed():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "params.yaml"
    return path, yaml.safe_load(path.read_text())


def test_committed_params_file_resolves_every_model_it_lists():
    """The repo's own params.yaml (comments, flow maps, `null`) as load_params reads it: each
    `models:` and `switched:` entry becomes a run whose every data/model/train key is the
    file's section value or the entry's override, whose objective and k are the entry's, and
    whose flat view (model.json, MLflow params) survives JSON."""
    import json

    path, raw = _committed()
    p = load_params(path)
    entries = {**(raw.get("models") or {}), **(raw.get("switched") or {})}
    assert list(p.models) == list(entries) and entries
    for name, entry in entries.items():
        run = p.models[name]
        assert (run.objective, run.k) == (entry["objective"], entry.get("k", 1))
        flat = run.as_flat_dict()
        assert json.loads(json.dumps(flat)) == flat
        for section in ("data", "model", "train"):
            for key, value in dataclasses.asdict(getattr(run, section)).items():
                want = entry.get(key, raw.get(section, {}).get(key, value)) \
                    if section != "data" else raw["data"].get(key, value)
                want = tuple(want) if isinstance(want, list) else want
                assert value == want, (name, section, key)


def test_default_budget_is_the_committed_params_budget():
    """DEFAULT_BUDGET is documented as the committed params.yaml's budget (a run below it is
    labelled indicative): it must follow the file, not drift from it."""
    from vaelab.config import DEFAULT_BUDGET

    p = load_params(_committed()[0])
    for key, value in DEFAULT_BUDGET.items():
        section, name = key.split(".")
        assert getattr(getattr(p, section), name) == value, key


def test_default_budget_is_the_committed_params():
    """DEFAULT_BUDGET comes from the dataclasses' defaults; the committed params.yaml must
    say the same, or a default run would be labelled indicative (or a short one not)."""
    from pathlib import Path

    from vaelab.config import DEFAULT_BUDGET

    shipped = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    assert DEFAULT_BUDGET == {"train.epochs": shipped.train.epochs,
                              "train.batch_size": shipped.train.batch_size,
                              "evaluate.k": shipped.evaluate.k,
                              "evaluate.n_test": shipped.evaluate.n_test}
    assert all(r.train.epochs == DEFAULT_BUDGET["train.epochs"] for r in shipped.models.values())


def test_per_model_overrides_resolve():
    raw = defaults()
    raw["models"]["iwae"] = {"objective": "iwae", "k": 50, "epochs": 7, "latent": 10}
    p = parse_params(raw, FILE)
    iwae, vae = p.models["iwae"], p.models["vae"]
    assert iwae.train.epochs == 7 and iwae.model.latent == 10
    # the untouched keys still come from the sections
    assert iwae.train.batch_size == 100 and iwae.model.hidden == (200, 200)
    assert vae.train.epochs == 100 and vae.model.latent == 50
    assert vae.model == p.model and vae.train == p.train
    # sections themselves are not changed by an override
    assert p.train.epochs == 100 and p.model.latent == 50


def test_override_of_hidden_becomes_a_tuple():
    raw = defaults()
    raw["models"]["vae"]["hidden"] = [100, 50, 25]
    p = parse_params(raw, FILE)
    assert p.models["vae"].model.hidden == (100, 50, 25)
    assert p.models["iwae"].model.hidden == (200, 200)


def test_gaussian_decoder_with_grey_values_parses():
    raw = defaults()
    raw["data"]["binarize"] = "none"
    raw["model"]["decoder"] = "gaussian"
    raw["model"]["decoder_scale"] = 0.1
    p = parse_params(raw, FILE)
    assert p.models["vae"].model.decoder == "gaussian"
    assert p.models["vae"].model.decoder_scale == 0.1


def test_missing_sections_take_defaults():
    p = parse_params({"models": {"vae": {"objective": "elbo_analytic"}}}, FILE)
    assert p.models["vae"].k == 1
    assert p.train.epochs == 200 and p.model.hidden == (200, 200)
    assert p.evaluate.snr_repeats >= 2 and p.mlflow.experiment


def test_prior_k_follows_evaluate_k():
    e = parse_params({"models": {"vae": {"objective": "elbo_analytic"}},
                      "evaluate": {"k": 200, "prior_k": [1, 10, 100, 1000, 5000]}}).evaluate
    assert clipped_prior_k(e) == (1, 10, 100, 200)
    assert clipped_prior_k(dataclasses.replace(e, k=5000)) == (1, 10, 100, 1000, 5000)


def test_valid_k_is_shared_by_every_model():
    with pytest.raises(ParamsError, match="models.iwae.valid_k: is shared by all models"):
        parse_params({"models": {"iwae": {"objective": "iwae", "k": 5, "valid_k": 5}}})
    p = parse_params({"train": {"valid_k": 7}, "models": {"vae": {"objective": "elbo_analytic"}}})
    assert p.models["vae"].train.valid_k == 7


def test_validated_epochs_follow_the_grid_rule():
    """Epochs 1..valid_every, then every valid_every-th, and the last; every epoch at 1."""
    from vaelab.config import TrainConfig

    def validated(**kw):
        t = TrainConfig(**kw)
        return [e for e in range(1, t.epochs + 1) if t.validates(e)]

    assert validated(epochs=23, valid_every=5) == [1, 2, 3, 4, 5, 10, 15, 20, 23]
    assert validated(epochs=20, valid_every=5) == [1, 2, 3, 4, 5, 10, 15, 20]
    assert validated(epochs=3, valid_every=5) == [1, 2, 3]
    assert validated(epochs=10, valid_every=3) == [1, 2, 3, 6, 9, 10]
    assert validated(epochs=7) == list(range(1, 8))  # the dataclass default: every epoch
    # the committed params: 44 of 200 epochs
    assert len(validated(epochs=200, valid_every=5)) == 44
    for epochs in range(1, 40):  # the closed form vaelab.cost uses counts the same epochs
        for every in range(1, 12):
            t = TrainConfig(epochs=epochs, valid_every=every)
            assert t.validations() == len(validated(epochs=epochs, valid_every=every))


def test_valid_every_default_and_per_model_override():
    p = parse_params({"train": {"valid_every": 4},
                      "models": {"vae": {"objective": "elbo_analytic"},
                                 "iwae": {"objective": "iwae", "k": 5, "valid_every": 2}}})
    assert (p.models["vae"].train.valid_every, p.models["iwae"].train.valid_every) == (4, 2)
    assert parse_params(defaults()).train.valid_every == 1  # a file without the key: as before


def test_as_flat_dict():
    raw = defaults()
    raw["models"]["iwae"]["epochs"] = 7
    flat = parse_params(raw, FILE).models["iwae"].as_flat_dict()
    assert flat["name"] == "iwae" and flat["objective"] == "iwae" and flat["k"] == 50
    assert flat["train.epochs"] == 7
    assert flat["model.hidden"] == [200, 200]  # a list, for JSON / MLflow
    assert flat["model.latent"] == 50 and flat["data.source"] == "mnist5k"
    assert flat["train.learning_rate"] == 0.001
    assert flat["estimator"] == "standard" and "m" not in flat and "beta" not in flat
    assert all(k in ("name", "objective", "k", "estimator")
               or k.split(".")[0] in ("data", "model", "train")
               for k in flat)


# ---------------------------------------------------------------------------------------
# mistakes: (id, mutation of the defaults, fragments the one-line message must contain)

def setter(*path_and_value):
    """setter("models", "iwae", "k", 0) -> mutation that sets raw[models][iwae][k] = 0."""
    *path, value = path_and_value

    def mutate(raw):
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return raw
    return mutate


def deleter(*path):
    def mutate(raw):
        node = raw
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
        return raw
    return mutate


def rename(section, old, new):
    def mutate(raw):
        raw[section] = {new if k == old else k: v for k, v in raw[section].items()}
        return raw
    return mutate


def both(*mutations):
    def mutate(raw):
        for m in mutations:
            raw = m(raw)
        return raw
    return mutate


def _rename_top(raw):
    raw["trian"] = raw.pop("train")
    return raw


def _add_model(name, entry):
    return setter("models", name, entry)


MISTAKES = [
    # models.<name>.k
    ("k-zero", setter("models", "iwae", "k", 0), ["models.iwae.k", "positive integer", "got 0"]),
    ("k-negative", setter("models", "iwae", "k", -3), ["models.iwae.k", "positive integer", "got -3"]),
    ("k-float", setter("models", "iwae", "k", 2.5), ["models.iwae.k", "positive integer", "got 2.5"]),
    ("k-string", setter("models", "iwae", "k", "50"), ["models.iwae.k", "positive integer", "got '50'"]),
    ("k-bool", setter("models", "iwae", "k", True), ["models.iwae.k", "positive integer", "got True"]),
    ("k-null", setter("models", "iwae", "k", None), ["models.iwae.k", "positive integer", "got None"]),
    ("elbo-analytic-k5", setter("models", "vae", "k", 5),
     ["models.vae.k", "must be 1 for objective elbo_analytic", "got 5"]),
    ("elbo-mc-k2", setter("models", "vae_mc", "k", 2),
     ["models.vae_mc.k", "must be 1 for objective elbo_mc"]),
    # objectives and model entries
    ("objective-typo", setter("models", "iwae", "objective", "iwea"),
     ["models.iwae.objective", "must be one of", "did you mean 'iwae'", "got 'iwea'"]),
    ("objective-missing", deleter("models", "vae", "objective"),
     ["models.vae.objective", "is required", "elbo_analytic"]),
    ("objective-unrelated", setter("models", "vae", "objective", "zzz"),
     ["models.vae.objective",
      "must be one of elbo_analytic, elbo_mc, vae_k, iwae, miwae, ciwae, piwae, prior_mc"]),
    ("m-on-iwae", setter("models", "iwae", "m", 5),
     ["models.iwae.m", "does not apply to objective iwae", "miwae, piwae"]),
    ("estimator-on-vae", setter("models", "vae", "estimator", "dreg"),
     ["models.vae.estimator", "does not apply to objective elbo_analytic", "iwae, miwae"]),
    ("estimator-typo", setter("models", "iwae", "estimator", "dreq"),
     ["models.iwae.estimator", "did you mean 'dreg'"]),
    ("beta-range", setter("models", "c", {"objective": "ciwae", "k": 5, "beta": 1.5}),
     ["models.c.beta", "must be in [0, 1]"]),
    ("m-zero", setter("models", "c", {"objective": "miwae", "k": 5, "m": 0}),
     ["models.c.m", "must be a positive integer"]),
    ("models-entry-unknown-key", setter("models", "vae", "epoch", 3),
     ["models.vae.epoch", "unknown key", "did you mean 'epochs'"]),
    ("model-name-newline", _add_model("a\nb", {"objective": "elbo_mc"}),
     ["models.a\\nb", "letters, digits"]),
    ("key-with-newline", setter("train", "epo\nchs", 3), ["train.epo\\nchs", "unknown key"]),
    ("models-empty", setter("models", {}), ["models", "at least one model"]),
    ("models-null", setter("models", None), ["models", "at least one model"]),
    ("models-a-list", setter("models", ["vae", "iwae"]), ["models", "must be a mapping"]),
    ("model-entry-a-list", setter("models", "vae", ["elbo_analytic", 1]),
     ["models.vae", "must be a mapping"]),
    ("model-entry-a-string", setter("models", "vae", "elbo_analytic"),
     ["models.vae", "must be a mapping", "got 'elbo_analytic'"]),
    ("model-name-space", _add_model("my vae", {"objective": "elbo_mc"}),
     ["models.my vae", "letters, digits, '_' and '-' only"]),
    ("model-name-slash", _add_model("runs/vae", {"objective": "elbo_mc"}),
     ["models.runs/vae", "letters, digits, '_' and '-' only"]),
    ("model-name-int", _add_model(3, {"objective": "elbo_mc"}),
     ["models.3", "letters, digits, '_' and '-' only"]),
    ("override-epochs-zero", setter("models", "iwae", "epochs", 0),
     ["models.iwae.epochs", "positive integer", "got 0"]),
    ("override-hidden-zero", setter("models", "iwae", "hidden", [200, 0]),
     ["models.iwae.hidden[1]", "positive integer", "got 0"]),
    ("override-activation", setter("models", "iwae", "activation", "relux"),
     ["models.iwae.activation", "did you mean 'relu'"]),
    ("override-gaussian", setter("models", "iwae", "decoder", "gaussian"),
     ["models.iwae.decoder", "binarize: none"]),
    # top level
    ("top-level-typo", _rename_top, ["trian", "unknown key", "did you mean 'train'"]),
    ("top-level-list", lambda raw: [raw], ["(top level)", "must be a mapping"]),
    ("top-level-string", lambda raw: "data", ["(top level)", "must be a mapping", "got 'data'"]),
    ("section-a-list", setter("train", [100, 0.001]), ["train", "must be a mapping"]),
    # data
    ("data-source-unknown", setter("data", "source", "mnits"),
     ["data.source", "must be one of", "mnist5k", "did you mean 'mnist'", "got 'mnits'"]),
    ("data-binarize-unknown", setter("data", "binarize", "dynamc"),
     ["data.binarize", "must be one of", "did you mean 'dynamic'", "got 'dynamc'"]),
    ("data-unknown-key", setter("data", "valid", 100), ["data.valid", "unknown key", "valid_size"]),
    ("data-idx-no-path", setter("data", "source", "idx"),
     ["data.path", "idx files", "data.source is idx", "got None"]),
    ("data-npz-no-path", setter("data", "source", "npz"), ["data.path", ".npz file"]),
    ("data-path-not-str", setter("data", "path", 5), ["data.path", "a path or null", "got 5"]),
    ("data-valid-size-zero", setter("data", "valid_size", 0),
     ["data.valid_size", "positive integer"]),
    ("data-seed-negative", setter("data", "seed", -1), ["data.seed", "integer >= 0", "got -1"]),
    ("gaussian-with-dynamic", setter("model", "decoder", "gaussian"),
     ["model.decoder", "binarize: none", "got 'gaussian'"]),
    ("none-with-bernoulli", setter("data", "binarize", "none"),
     ["data.binarize", "decoder: gaussian", "bernoulli"]),
    # model
    ("hidden-empty", setter("model", "hidden", []), ["model.hidden", "non-empty list", "got []"]),
    ("hidden-contains-zero", setter("model", "hidden", [200, 0]),
     ["model.hidden[1]", "positive integer", "got 0"]),
    ("hidden-not-a-list", setter("model", "hidden", 200),
     ["model.hidden", "non-empty list", "got 200"]),
    ("hidden-a-string", setter("model", "hidden", "200,200"),
     ["model.hidden", "non-empty list", "got '200,200'"]),
    ("latent-zero", setter("model", "latent", 0), ["model.latent", "positive integer", "got 0"]),
    ("activation-unknown", setter("model", "activation", "tahn"),
     ["model.activation", "did you mean 'tanh'"]),
    ("decoder-unknown", setter("model", "decoder", "bernouli"),
     ["model.decoder", "did you mean 'bernoulli'"]),
    ("decoder-scale-word",
     both(setter("data", "binarize", "none"), setter("model", "decoder", "gaussian"),
          setter("model", "decoder_scale", "big")),
     ["model.decoder_scale", "'learned' or a number > 0", "got 'big'"]),
    ("decoder-scale-negative",
     both(setter("data", "binarize", "none"), setter("model", "decoder", "gaussian"),
          setter("model", "decoder_scale", -1)),
     ["model.decoder_scale", "> 0", "got -1"]),
    ("model-unknown-key", setter("model", "latnet", 10),
     ["model.latnet", "unknown key", "did you mean 'latent'"]),
    # train
    ("lr-zero", setter("train", "learning_rate", 0), ["train.learning_rate", "> 0", "got 0"]),
    ("lr-negative", setter("train", "learning_rate", -0.001),
     ["train.learning_rate", "> 0", "got -0.001"]),
    ("lr-string", setter("train", "learning_rate", "fast"),
     ["train.learning_rate", "finite number", "got 'fast'"]),
    ("lr-nan", setter("train", "learning_rate", math.nan),
     ["train.learning_rate", "finite number", "got nan"]),
    ("lr-yaml-1e-3-is-text", setter("train", "learning_rate", "1e-3"),
     ["train.learning_rate", "finite number", "write 1.0e-3", "got '1e-3'"]),
    ("lr-inf", setter("train", "learning_rate", math.inf),
     ["train.learning_rate", "finite number", "got inf"]),
    ("lr-bool", setter("train", "learning_rate", True), ["train.learning_rate", "finite number"]),
    ("batch-size-zero", setter("train", "batch_size", 0),
     ["train.batch_size", "positive integer", "got 0"]),
    ("epochs-float", setter("train", "epochs", 10.0), ["train.epochs", "positive integer"]),
    ("jit-string", setter("train", "jit", "yes"), ["train.jit", "false, fused or true", "got 'yes'"]),
    ("steps-per-execution-zero", setter("train", "steps_per_execution", 0),
     ["train.steps_per_execution", "positive integer", "got 0"]),
    ("valid-every-zero", setter("train", "valid_every", 0),
     ["train.valid_every", "positive integer", "got 0"]),
    ("valid-every-float", setter("train", "valid_every", 2.5),
     ["train.valid_every", "positive integer", "got 2.5"]),
    ("valid-every-bool", setter("train", "valid_every", True),
     ["train.valid_every", "positive integer", "got True"]),
    ("valid-every-per-model", setter("models", "iwae", "valid_every", -1),
     ["models.iwae.valid_every", "positive integer", "got -1"]),
    # evaluate / sample / mlflow
    ("snr-repeats-one", setter("evaluate", "snr_repeats", 1),
     ["evaluate.snr_repeats", ">= 2", "got 1"]),
    ("evaluate-k-zero", setter("evaluate", "k", 0), ["evaluate.k", "positive integer", "got 0"]),
    ("evaluate-snr-k-empty", setter("evaluate", "snr_k", []), ["evaluate.snr_k", "non-empty list"]),
    ("evaluate-prior-k-zero", setter("evaluate", "prior_k", [1, 0]),
     ["evaluate.prior_k[1]", "positive integer"]),
    ("evaluate-unknown-key", setter("evaluate", "samples", 10), ["evaluate.samples", "unknown key"]),
    ("sample-n-negative", setter("sample", "n", -1), ["sample.n", "positive integer", "got -1"]),
    ("sample-unknown-key", setter("sample", "count", 5), ["sample.count", "unknown key"]),
    ("mlflow-experiment-empty", setter("mlflow", "experiment", ""),
     ["mlflow.experiment", "non-empty name", "got ''"]),
    ("mlflow-experiment-blank", setter("mlflow", "experiment", "  "), ["mlflow.experiment", "non-empty"]),
    ("mlflow-experiment-number", setter("mlflow", "experiment", 3),
     ["mlflow.experiment", "non-empty name", "got 3"]),
]


@pytest.mark.parametrize("mutate, fragments", [m[1:] for m in MISTAKES],
                         ids=[m[0] for m in MISTAKES])
def test_mistake_gives_one_line_params_error(mutate, fragments):
    raw = mutate(defaults())
    with pytest.raises(ParamsError) as info:
        parse_params(raw, FILE)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{FILE}: "), msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"


@pytest.mark.parametrize("mutate", [lambda raw: raw, MISTAKES[0][1],
                                    setter("models", "iwae", "hidden", [10, 5])])
def test_parsing_never_changes_the_raw_params(mutate):
    """Config flows one way: parse_params reads the YAML's dict and never writes into it
    (overrides are merged into new dicts), whether it succeeds or fails."""
    raw = mutate(defaults())
    before = copy.deepcopy(raw)
    try:
        parse_params(raw, FILE)
    except ParamsError:
        pass
    assert raw == before


def test_default_file_name():
    with pytest.raises(ParamsError, match=r"^params\.yaml: models: "):
        parse_params({"models": {}})


# ---------------------------------------------------------------------------------------
# load_params

def test_load_missing_file(tmp_path):
    path = tmp_path / "nope" / "params.yaml"
    with pytest.raises(ParamsError) as info:
        load_params(path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "file not found" in msg and "\n" not in msg


def test_load_a_directory(tmp_path):
    with pytest.raises(ParamsError) as info:
        load_params(tmp_path)
    msg = str(info.value)
    assert msg.startswith(str(tmp_path)) and "\n" not in msg


@pytest.mark.parametrize("text, line", [
    ("data:\n  source: mnist5k\n\tbinarize: dynamic\n", 3),  # tab indentation
    ("model:\n  latent: 50\n  hidden: [200, 200\n", 4),       # unbalanced bracket (hits EOF)
    ("train:\n  epochs: 10\n   batch_size: 100\n", 3),         # bad indentation
], ids=["tab", "unbalanced-bracket", "indentation"])
def test_load_invalid_yaml(tmp_path, text, line):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError) as info:
        load_params(path)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{path}: not valid YAML"), msg
    assert f"line {line}" in msg, msg


def test_load_yaml_with_control_character(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("mlflow:\n  experiment: a\x07b\n")
    with pytest.raises(ParamsError) as info:
        load_params(path)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{path}: not valid YAML"), msg


def test_load_yaml_1e_3_hint(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: {learning_rate: 1e-3}\nmodels: {vae: {objective: elbo_analytic}}\n")
    with pytest.raises(ParamsError, match=r"train\.learning_rate: .*write 1\.0e-3"):
        load_params(path)
    path.write_text("train: {learning_rate: 1.0e-3}\nmodels: {vae: {objective: elbo_analytic}}\n")
    assert load_params(path).train.learning_rate == 0.001


def test_load_not_utf8(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"mlflow: {experiment: caf\xe9}\n")
    with pytest.raises(ParamsError) as info:
        load_params(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: cannot read") and "\n" not in msg


def test_load_empty_file_asks_for_models(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("")
    with pytest.raises(ParamsError, match="models: must list at least one model"):
        load_params(path)


def test_load_semantic_error_names_the_path(tmp_path):
    raw = defaults()
    raw["models"]["iwae"]["k"] = 0
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert str(info.value).startswith(f"{path}: models.iwae.k: ")


def test_load_round_trip(tmp_path):
    raw = defaults()
    raw["models"]["iwae"].update(epochs=7, latent=10)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    p = load_params(path)
    assert p == parse_params(raw, str(path))
    assert p.path == str(path)
    assert p.models["iwae"].train.epochs == 7 and p.models["iwae"].model.latent == 10
    assert p.models["vae"].train.epochs == 100 and p.models["vae"].model.latent == 50
    assert p.models["iwae"].model.hidden == (200, 200)
    # also accepts a plain string path
    assert load_params(str(path)) == p


def test_load_yaml_written_by_hand(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(
        "data:    {source: mnist5k, path: null, binarize: dynamic, valid_size: 500,"
        " test_size: 500, seed: 0}\n"
        "model:   {latent: 50, hidden: [200, 200], activation: tanh, decoder: bernoulli}\n"
        "train:   {epochs: 100, batch_size: 100, learning_rate: 0.001, seed: 0}\n"
        "models:\n"
        "  vae:    {objective: elbo_analytic, k: 1}\n"
        "  vae_mc: {objective: elbo_mc, k: 1}\n"
        "  iwae:   {objective: iwae, k: 50}\n"
        "  prior:  {objective: prior_mc, k: 50}\n"
        "evaluate: {k: 5000, n_test: 500}\n"
        "sample:   {n: 100}\n"
        "mlflow:   {experiment: vae-iwae}\n")
    assert load_params(path) == parse_params(defaults(), str(path))
