"""inputs.py: what the model's API takes (images, latent vectors, labels, counts, generators, devices) and the errors
that say what it expected."""

import numpy as np
import pytest
import torch

import hardware
import inputs
import vae
from config import VAEConfig
from conftest import conditional, images


def test_labels_are_digits_one_digit_for_all_or_one_hot_rows():
    model = conditional()
    z = torch.randn(3, 2)
    expected = model.decode(z, labels=torch.tensor([1, 4, 9]))
    one_hot = torch.nn.functional.one_hot(torch.tensor([1, 4, 9]), 10)
    for same in ([1, 4, 9], (1, 4, 9), np.array([1, 4, 9]), torch.tensor([1.0, 4.0, 9.0]), one_hot, one_hot.float()):
        assert torch.equal(model.decode(z, labels=same), expected)
    assert torch.equal(model.decode(z, labels=7), model.decode(z, labels=[7, 7, 7]))
    bad = {"ten": 10, "negative": [-1, 0, 0], "too few": [1, 2], "not whole": [1.5, 2, 3], "bool": True,
           "not one-hot": one_hot * 2, "two ones": one_hot + torch.nn.functional.one_hot(torch.tensor([0, 0, 0]), 10),
           "text": "seven", "nan": [float("nan"), 1, 2], "bool tensor": torch.ones(3, dtype=torch.bool)}
    for name, labels in bad.items():
        with pytest.raises(ValueError, match="expected labels"):
            model.decode(z, labels=labels)
        assert name


def test_a_conditional_model_needs_labels_and_a_plain_one_refuses_them():
    model, plain, x, z = conditional(), vae.VAE(VAEConfig(2, 16)).eval(), images(2), torch.randn(2, 2)
    calls = {"encode": lambda m, **k: m.encode(x, **k), "decode": lambda m, **k: m.decode(z, **k),
             "reconstruct": lambda m, **k: m.reconstruct(x, **k), "sample": lambda m, **k: m.sample(2, **k),
             "interpolate": lambda m, **k: m.interpolate(x, x, 3, **k)}
    for name, call in calls.items():
        with pytest.raises(ValueError, match="this model is conditional"):
            call(model)
        with pytest.raises(ValueError, match="this model is not conditional"):
            call(plain, labels=(1, 2) if name == "interpolate" else 1)
        got = call(model, labels=(1, 2) if name == "interpolate" else 1)
        assert (got[0] if name == "encode" else got).shape[-1] in (2, 784), name


def test_odd_inputs_to_the_labels_and_the_interpolation():
    model = conditional()
    z = torch.randn(3, 2)
    expected = model.decode(z, labels=[1, 4, 9])
    for dtype in (torch.uint16, torch.uint32, torch.uint64, torch.int16):
        assert torch.equal(model.decode(z, labels=torch.tensor([1, 4, 9]).to(dtype)), expected), dtype
    assert torch.equal(model.decode(z, labels=np.array([1, 4, 9], dtype=np.uint64)), expected)
    for n_zero in (lambda: model.sample(0, labels=11), lambda: model.encode(torch.rand(0, 784), labels=11)):
        with pytest.raises(ValueError, match="expected labels"):
            n_zero()
    empty = torch.rand(0, 784)
    assert model.interpolate(empty, empty, 5, labels=(1, 2)).shape == (0, 5, 784)
    assert vae.VAE(VAEConfig(2, 16)).interpolate(empty, empty, 5).shape == (0, 5, 784)
    with pytest.raises(ValueError, match="memory"):
        model.interpolate(empty, empty, 10**15, labels=(1, 2))


def test_the_api_checks_its_inputs_and_says_what_it_expected():
    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(dim_z=2, n_hidden=16)).eval()
    z = torch.zeros(3, 2)
    assert model.decode(z.double()).dtype == model.decode(z.half()).dtype == torch.float32
    bad_z = {"the wrong width": torch.zeros(3, 5), "one vector": torch.zeros(2), "integers": torch.zeros(3, 2).long(),
             "NaN": torch.full((3, 2), float("nan")), "a list": [[0.0, 0.0]]}
    for value in bad_z.values():
        with pytest.raises(ValueError, match="expected"):
            model.decode(value)
    for n in (-1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="expected a whole number of images"):
            model.sample(n)
    assert model.sample(0).shape == (0, 784)
    x = images(3)
    for bad in (x * 255, x.clone().fill_(float("nan")), x.clone().fill_(float("inf")), x - 1):
        with pytest.raises(ValueError, match="expected pixel values in \\[0, 2\\]"):
            model.encode(bad)
    assert model.reconstruct(x * 2).shape == (3, 784)  # the original's noisy inputs reach 2


def test_float64_images_are_accepted_as_float32():
    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(dim_z=2, n_hidden=16)).eval()
    x = images(3)
    assert torch.equal(model.encode(x.double())[0], model.encode(x)[0])
    assert model.reconstruct(x.double()).dtype == torch.float32


@pytest.mark.parametrize("device", ["xla", "xpu", "hpu", "lazy", "ipu", "meta", "mtia", "privateuseone", "vulkan"])
def test_a_device_torch_knows_but_the_model_does_not_run_on_is_a_value_error(device):
    with pytest.raises(ValueError, match="expected a device such as 'cpu' or 'cuda'"):
        inputs.as_device(device)


def test_devices_the_model_runs_on():
    assert inputs.as_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            inputs.as_device("cuda:0")
    else:
        with pytest.raises(ValueError, match="CUDA devices"):
            inputs.as_device(f"cuda:{torch.cuda.device_count()}")


def test_the_room_counted_for_decoding_includes_the_decoders_hidden_layers(monkeypatch):
    made = VAEConfig(dim_z=2, n_hidden=1000)
    need = 4 * 100 * (2 + 10 + 2 * 1000 + 2 * 784)
    monkeypatch.setattr(hardware, "available_memory", lambda device_type="cpu": need)
    inputs.check_room(100, made, torch.device("cpu"))
    with pytest.raises(ValueError, match="decoding 101 images needs about"):
        inputs.check_room(101, made, torch.device("cpu"))


def test_encode_decode_and_reconstruct_check_the_room_they_need(monkeypatch):
    model = vae.VAE(VAEConfig(dim_z=2, n_hidden=16))
    monkeypatch.setattr(hardware, "available_memory", lambda device_type="cpu": 10**5)
    for call in (lambda: model.decode(torch.zeros(1000, 2)), lambda: model.encode(torch.zeros(1000, 784)),
                 lambda: model.reconstruct(torch.zeros(1000, 784))):
        with pytest.raises(ValueError, match="decoding 1000 images needs about"):
            call()
    assert model.decode(torch.zeros(2, 2)).shape == (2, 784)
