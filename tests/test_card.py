"""vaelab.card: model.json <-> the typed model card, schema versions, and the model folder
read back as one model object (models.load_vae)."""
from vaelab.quiet import silence_tf

silence_tf()

import io  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vaelab import card, models, train  # noqa: E402
from vaelab.config import parse_params  # noqa: E402

# a model.json as the train stage wrote it before the card had a version (version 1)
V1 = {"name": "vae", "objective": "miwae", "k": 5, "m": 2, "estimator": "dreg",
      "data.source": "mnist5k", "data.binarize": "dynamic", "model.latent": 50,
      "model.hidden": [200, 200], "model.activation": "tanh", "model.decoder": "bernoulli",
      "model.decoder_scale": "learned", "model.precision": "float32", "train.epochs": 200,
      "epochs_trained": 200, "stopped_early": False, "train_seconds": 812.5,
      "posterior_std_by_epoch": [[1, 0.9], [20, 0.3]]}


def test_a_version_1_file_reads_as_it_is_and_rewrites_with_a_version():
    c = card.ModelCard.from_info(V1)
    assert c.schema_version == 1 and c.name == "vae" and c.objective == "miwae" and c.k == 5
    assert c.options == {"m": 2, "estimator": "dreg"}
    assert c.epochs_trained == 200 and c.stopped_early is False and c.best_epoch is None
    assert c.posterior_std_by_epoch == [[1, 0.9], [20, 0.3]]
    m = c.model_config()
    assert m.layers == 1 and m.hidden == (200, 200) and m.latent == 50
    assert c.to_info() == {**V1, "schema_version": 2}


def test_a_newer_version_is_refused_in_one_line(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({**V1, "schema_version": 3}))
    with pytest.raises(card.CardError) as err:
        card.read(tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "model.json") in msg and "schema_version 3" in msg and "\n" not in msg


def test_posterior_trace_takes_validated_epochs_only():
    """~10 epochs of the posterior std for the report: with train.valid_every an unvalidated
    pick gives the last validated epoch before it; validating every epoch, the picks are
    1, every, 2 every, ... as always."""
    from types import SimpleNamespace

    from vaelab.config import TrainConfig

    run = parse_params({"models": {"vae": {"objective": "elbo_analytic"}}}).models["vae"]

    def trace(valid_every):
        t = TrainConfig(epochs=40, valid_every=valid_every)
        history = [{"epoch": e, "seconds": 1.0,
                    **({"valid_posterior_std": 1.0 / e} if t.validates(e) else {})}
                   for e in range(1, 41)]
        result = SimpleNamespace(history=history, epochs_trained=40, stopped_early=False,
                                 best_epoch=None, restored_best=False)
        got = card.ModelCard.from_training(run, result).posterior_std_by_epoch
        assert all(v == 1.0 / e for e, v in got)
        return [e for e, _ in got]

    assert trace(1) == [1, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    assert trace(3) == [1, 3, 6, 12, 15, 18, 24, 27, 30, 36, 40]


def test_training_writes_a_card_that_rebuilds_the_model(tmp_path):
    params = parse_params({"model": {"latent": 3, "hidden": [16], "layers": 2, "h1_latent": 4,
                                     "h1_hidden": [8]},
                           "train": {"epochs": 2, "batch_size": 40, "valid_k": 3},
                           "models": {"m": {"objective": "ciwae", "k": 3, "beta": 0.25}}})
    run = params.models["m"]
    digits = (np.random.default_rng(1).random((160, 28, 28)) * 255).astype(np.uint8)
    result = train.train(run, digits[:120], digits[120:], progress=train.Progress(
        "m", 2, io.StringIO()))
    written = card.ModelCard.from_training(run, result, init_from_valid_Lk=-99.5)
    models.save(tmp_path, result.encoder, result.decoder, written)
    vae, back = models.load_vae(tmp_path)
    assert back == written  # every field survives the file
    assert back.model_config() == run.model and back.options == run.options()
    assert back.epochs_trained == 2 and back.train_seconds > 0
    assert [e for e, _ in back.posterior_std_by_epoch] == [1, 2]
    assert isinstance(vae, models.VAE) and vae.layers == 2 and vae.kind == "bernoulli"
    x = (digits[120:124].reshape(4, -1) > 127).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(vae.reconstruct(x)),
                                  np.asarray(result.vae.reconstruct(x)))
    _, _, info = models.load(tmp_path)  # the flat view evaluation reads
    assert info["beta"] == 0.25 and info["model.layers"] == 2 and info["schema_version"] == 2
