"""hardware.py: the device, the one free-memory check, and the measured speed of fp32 and bf16 products."""
import pytest
import torch

import hardware
from config import VAEConfig


def test_the_one_memory_check_names_what_does_not_fit(monkeypatch):
    monkeypatch.setattr(hardware, "available_memory", lambda device_type="cpu": 2 * 10**9)
    hardware.check_memory(2 * 10**9, "the model")
    with pytest.raises(ValueError, match="^the model needs about 2 GB of memory; 2 GB is available$"):
        hardware.check_memory(2 * 10**9 + 1, "the model")
    monkeypatch.setattr(hardware, "available_memory", lambda device_type="cpu": None)
    hardware.check_memory(10**30, "anything")  # where free memory is unknown, nothing is refused


def test_products_are_timed_in_both_precisions_on_the_runs_shapes():
    fp32_s, bf16_s = hardware.product_seconds(torch.device("cpu"), VAEConfig(dim_z=2, n_hidden=8), rows=4, repeats=2)
    assert 0 < fp32_s < 1 and 0 < bf16_s < 1


def test_auto_picks_the_cpu_without_a_gpu():
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert hardware.pick_device("auto") == torch.device("cpu")
        assert hardware.missing_device("cuda") == "no CUDA device is available"
    assert hardware.pick_device("cpu") == torch.device("cpu") and hardware.missing_device("cpu") is None
    assert isinstance(hardware.cpu_name(), str)
