"""config.py: the layer widths, parameter shapes and count the model is built from, the checks of its arguments, and
model_args as a checkpoint records them."""


import dataclasses

import pytest
from torch import nn

import config
import vae
from config import VAEConfig
from conftest import conditional


def test_the_conditional_networks_widths_follow_the_authors_cvae():
    model = conditional(dim_z=5, n_hidden=16)
    first, second = model.encoder.net[0], model.encoder.net[3]
    assert (first.in_features, first.out_features, second.in_features) == (784 + 10, 16 + 10, 16 + 10)
    assert model.decoder.net[0].in_features == 5 + 10 and model.decoder.net[0].out_features == 16
    for kind in (False, True):
        built = vae.VAE(VAEConfig(5, 16, conditional=kind))
        assert sum(p.numel() for p in built.parameters()) == VAEConfig(5, 16, conditional=kind).parameter_count()


def test_layers_are_the_originals():
    model = vae.VAE(VAEConfig(dim_z=3, n_hidden=17))
    kinds = lambda seq: [type(m) for m in seq]  # noqa: E731
    assert kinds(model.encoder.net) == [nn.Linear, nn.ELU, vae.Dropout, nn.Linear, nn.Tanh, vae.Dropout, nn.Linear]
    assert kinds(model.decoder.net) == [nn.Linear, nn.Tanh, vae.Dropout, nn.Linear, nn.ELU, vae.Dropout, nn.Linear]
    shapes = lambda seq: [tuple(m.weight.shape) for m in seq if isinstance(m, nn.Linear)]  # noqa: E731
    assert shapes(model.encoder.net) == [(17, 784), (17, 17), (6, 17)]
    assert shapes(model.decoder.net) == [(17, 3), (17, 17), (784, 17)]


@pytest.mark.parametrize("kind", [False, True])
def test_the_shapes_are_the_models_own_in_its_order(kind):
    made = VAEConfig(dim_z=3, n_hidden=7, keep_prob=0.5, conditional=kind)
    model = vae.VAE(made)
    assert made.shapes() == {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert list(made.shapes()) == [name for name, _ in model.named_parameters()]
    assert made.model_bytes() == 4 * sum(p.numel() for p in model.parameters())


def test_model_args_round_trip_and_older_files_read_as_the_original():
    made = VAEConfig(4, 9, 1, True)
    assert made.keep_prob == 1.0 and isinstance(made.keep_prob, float)
    assert VAEConfig.from_saved(made.as_saved()) == made
    assert made.as_saved() == {"dim_z": 4, "n_hidden": 9, "keep_prob": 1.0, "conditional": True}
    assert VAEConfig.from_saved({"dim_z": 2, "n_hidden": 5}) == VAEConfig(2, 5, config.KEEP_PROB, False)
    for bad in ({"dim_z": 2}, {"dim_z": 2, "n_hidden": 5, "colour": True}, [2, 5], {"dim_z": 2, "n_hidden": 5.0}):
        with pytest.raises(ValueError):
            VAEConfig.from_saved(bad)


def test_the_config_is_frozen_and_checked_when_made():
    made = VAEConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.dim_z = 3
    for bad in (dict(dim_z=0), dict(n_hidden=config.MAX_WIDTH + 1), dict(keep_prob=1e-4), dict(keep_prob="0.5"),
                dict(conditional=1), dict(dim_z=True)):
        with pytest.raises(ValueError, match="expected"):
            VAEConfig(**bad)


def test_training_memory_grows_with_the_batch_past_an_evaluation_batch():
    made = VAEConfig()
    assert made.training_bytes(1) == made.training_bytes(config.EVAL_ROWS) > 16 * made.parameter_count()
    assert made.training_bytes(10 * config.EVAL_ROWS) > made.training_bytes(config.EVAL_ROWS)
