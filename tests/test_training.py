"""training.py: Adam, the schedules, the KL warm-up, an epoch of training, the evaluation, and a resumed run's restored
state."""
import copy
import math

import pytest
import torch

import checkpoint
import training
import vae
from config import VAEConfig
from conftest import DEVICES, adam_state, conditional, edited, images


def test_a_conditional_model_trains_on_labelled_batches():
    model = conditional(dim_z=2).train()
    optimizer = training.adam(model, 1e-3)
    x, y = (images(64) > 0.5).float(), torch.arange(64) % 10
    first = training.train_epoch(model, optimizer, [(x, x, y)]).loss
    last = training.train_epoch(model, optimizer, [(x, x, y)] * 40).loss
    assert last < first
    with pytest.raises(ValueError, match="needs the label"):
        training.train_epoch(model, optimizer, [(x, x, None)])


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(dim_z=2, n_hidden=64))
    optimizer = training.adam(model, 1e-3)
    x = images(64)
    first = training.train_epoch(model, optimizer, [(x, x, None)]).loss
    last = training.train_epoch(model, optimizer, [(x, x, None)] * 50).loss
    assert last < first - 50, (first, last)


def test_train_epoch_averages_and_stops_when_asked():
    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(dim_z=2, n_hidden=16))
    optimizer = training.adam(model, 1e-3)
    x = images(8)
    steps = []
    mean = training.train_epoch(model, optimizer, [(x, x, None)] * 3, on_step=steps.append)
    assert len(steps) == 3 and isinstance(mean, training.Metrics)
    assert mean.loss == pytest.approx(torch.stack(steps).mean().item(), rel=1e-6)
    assert mean.loss == pytest.approx(mean.nll + mean.divergence, rel=1e-5)
    calls = []
    stop = lambda: calls.append(1) or len(calls) > 2  # noqa: E731
    assert training.train_epoch(model, optimizer, [(x, x, None)] * 3, should_stop=stop) is None
    assert len(calls) == 3  # asked before each batch; stopped before the third


def test_cosine_rate_follows_the_formula():
    rate = lambda epoch, schedule="cosine": training.learning_rate(epoch, 11, 1e-3, 1e-5, schedule)  # noqa: E731
    assert rate(0) == 1e-3 and rate(10) == pytest.approx(1e-5, abs=1e-18)
    assert rate(5) == pytest.approx((1e-3 + 1e-5) / 2)
    for epoch in (1, 3, 7, 9):
        assert rate(epoch) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * epoch / 10)))
    assert all(rate(e) > rate(e + 1) for e in range(10))
    assert {rate(e, "constant") for e in range(11)} == {1e-3}
    assert training.learning_rate(0, 1, 1e-3, 1e-5, "cosine") == 1e-3  # a one-epoch run trains at --learn_rate


def test_kl_warmup_weights_per_step():
    assert training.kl_weights(0, 4, 2) == [0.0, 0.125, 0.25, 0.375]
    assert training.kl_weights(1, 4, 2) == [0.5, 0.625, 0.75, 0.875]
    assert training.kl_weights(2, 4, 2) == [1.0] * 4
    assert training.kl_weights(0, 3, 0) == [1.0] * 3
    assert training.kl_weights(3, 2, 10) == [0.3, 0.35]


def test_warmup_trains_on_the_weighted_kl_and_reports_the_weight_one_elbo():
    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(dim_z=3, n_hidden=32, keep_prob=1.0))
    x = images(16)
    torch.manual_seed(5)
    objective, loss, nll, kl = model.loss(x, x, kl_weight=0.25)
    assert loss.item() == pytest.approx(nll.item() + kl.item(), rel=1e-6)
    assert objective.item() == pytest.approx(nll.item() + 0.25 * kl.item(), rel=1e-6)
    # what train_epoch reports during warm-up is the weight-1 -ELBO of the step's sample
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.manual_seed(5)
    reported = training.train_epoch(model, optimizer, [(x, x, None)], kl_weight=[0.25])
    assert reported.loss == pytest.approx(loss.item(), rel=1e-6) and reported.divergence == pytest.approx(kl.item())
    # and the step's gradient is that of nll + 0.25 KL: at weight 0 the encoder's sigma head sees no KL
    torch.manual_seed(5)
    model.zero_grad()
    model.loss(x, x, kl_weight=0.0)[0].backward()
    no_kl = [p.grad.clone() for p in model.parameters()]
    torch.manual_seed(5)
    model.zero_grad()
    logits, _, _ = model(x)
    vae.neg_log_likelihood(logits, x).mean().backward()
    assert all(torch.allclose(a, p.grad) for a, p in zip(no_kl, model.parameters(), strict=True))


def test_train_epoch_reports_the_same_bound_with_dreg():
    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(dim_z=3, n_hidden=32))
    x = images(16)
    figures = []
    for gradient in ("iwae", "dreg"):
        copied = copy.deepcopy(model)
        torch.manual_seed(5)
        optimizer = training.adam(copied, 1e-3)
        figures.append(training.train_epoch(copied, optimizer, [(x, x, None)], k=3, gradient=gradient))
    assert figures[0] == figures[1]


def test_mean_abs_error_of_noisy_and_restored_inputs(trained):
    model, x = trained
    noisy = (x + 0.25).clamp(0, 1)
    torch.manual_seed(4)
    got_noisy, got_restored = training.mean_abs_error(model, noisy, x, batch_size=64)  # batches of 64, 64, 64, 8
    torch.manual_seed(4)
    expected = (model.reconstruct(noisy) - x).abs().mean().item()
    assert got_noisy == pytest.approx((noisy - x).abs().mean().item())
    assert got_restored == pytest.approx(expected, rel=1e-5)
    assert got_restored < got_noisy  # a trained model pulls the shifted images back towards the data


def test_bf16_training_follows_fp32():
    """Same seed, same 30 steps on a fixed batch: bf16 products lower the loss as fp32 does, within 1 nat."""
    x = images(128)
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = vae.VAE(VAEConfig(dim_z=8, n_hidden=128))
        optimizer = training.adam(model, 1e-3)
        first = training.train_epoch(model, optimizer, [(x, x, None)], precision).loss
        last = training.train_epoch(model, optimizer, [(x, x, None)] * 30, precision).loss
        assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
        losses[precision] = (first, last, training.evaluate(model, x, x).loss)
    (f32_first, f32_last, f32_test), (b16_first, b16_last, b16_test) = losses["fp32"], losses["bf16"]
    assert b16_last < b16_first - 50 and f32_last < f32_first - 50
    assert abs(b16_last - f32_last) < 1.0 and abs(b16_test - f32_test) < 1.0, losses


@pytest.mark.parametrize("device", DEVICES)
def test_on_a_device_training_lowers_the_loss_and_the_bound_is_finite(device):
    """fp32 and bf16 training steps, the IWAE bound with DReG, and the likelihood bound, on the device."""
    x = images(128).to(device)
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = vae.VAE(VAEConfig(dim_z=3, n_hidden=64)).to(device)
        optimizer = training.adam(model, 3e-3)
        first = training.train_epoch(model, optimizer, [(x, x, None)], precision, k=3, gradient="dreg").loss
        last = training.train_epoch(model, optimizer, [(x, x, None)] * 20, precision, k=3, gradient="dreg").loss
        assert last < first - 5, (precision, first, last)
        log_px = vae.mean_log_likelihood(model, x, x, 50)
        assert math.isfinite(log_px) and log_px < 0


def test_restored_adam_and_random_stream_continue_exactly(good):
    path, model = good
    read = checkpoint.read(path)
    saved = torch.load(path, weights_only=True)
    torch.manual_seed(123)
    restored, optimizer = training.restore(read, torch.device("cpu"), 1e-3)
    assert torch.equal(torch.get_rng_state(), saved["rng"]["cpu"])
    for i, entry in saved["optimizer"]["state"].items():
        assert all(torch.equal(adam_state(optimizer, i)[k], v) for k, v in entry.items())
    assert optimizer.param_groups[0]["amsgrad"] is False and optimizer.param_groups[0]["lr"] == 1e-3
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), model.state_dict().values(),
                                                 strict=True))


def test_the_files_hyperparameters_are_never_taken(good):
    path = edited(good[0], lambda raw: raw["optimizer"]["param_groups"][0].update(amsgrad=True, lr=5.0))
    _, optimizer = training.restore(checkpoint.read(path), torch.device("cpu"), 1e-3)
    assert optimizer.param_groups[0]["amsgrad"] is False and optimizer.param_groups[0]["lr"] == 1e-3
