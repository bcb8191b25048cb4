"""vae.py: layers, initialisation, -ELBO terms, dropout, training, and the importance-weighted bound."""
import math

import pytest
import torch
from torch import nn

import vae
from conftest import synthetic_digits


def images(n, seed=0):
    x, _ = synthetic_digits(n, seed)
    return torch.from_numpy(x).reshape(n, 784).float() / 255


def test_layers_are_the_originals():
    model = vae.VAE(dim_z=3, n_hidden=17)
    kinds = lambda seq: [type(m) for m in seq]  # noqa: E731
    assert kinds(model.encoder.net) == [nn.Linear, nn.ELU, vae.Dropout, nn.Linear, nn.Tanh, vae.Dropout, nn.Linear]
    assert kinds(model.decoder.net) == [nn.Linear, nn.Tanh, vae.Dropout, nn.Linear, nn.ELU, vae.Dropout, nn.Linear]
    shapes = lambda seq: [tuple(m.weight.shape) for m in seq if isinstance(m, nn.Linear)]  # noqa: E731
    assert shapes(model.encoder.net) == [(17, 784), (17, 17), (6, 17)]
    assert shapes(model.decoder.net) == [(17, 3), (17, 17), (784, 17)]


def test_dropout_keeps_nine_in_ten_scaled_by_one_over_keep_prob():
    torch.manual_seed(0)
    drop = vae.Dropout()
    h = torch.full((1000, 999), 2.0)  # an odd count, so the last 64-bit draw is only half used
    out = drop(h)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.002
    assert torch.allclose(out[kept], torch.tensor(2.0 / 0.9))
    assert not torch.equal(kept, drop(h) != 0)  # fresh masks each call
    h.requires_grad_(True)
    out = drop(h)
    out.sum().backward()
    assert torch.equal(h.grad, (out != 0) / 0.9)  # the gradient flows through kept units only
    drop.eval()
    assert drop(h) is h
    assert vae.KEEP_BELOW + 2**31 == int(0.9 * 2**32)


def test_shapes_and_positive_sigma():
    torch.manual_seed(0)
    model = vae.VAE(dim_z=5, n_hidden=32)
    x = images(7)
    mu, sigma = model.encoder(x)
    assert mu.shape == sigma.shape == (7, 5)
    assert (sigma >= 1e-6).all()
    logits, mu2, sigma2 = model(x)
    assert logits.shape == (7, 784)
    loss, nll, kl = model.loss(x, x)
    assert loss.shape == () and loss.item() == pytest.approx(nll.item() + kl.item(), rel=1e-6)
    assert model.decode(torch.zeros(4, 5)).shape == (4, 784)


def test_variance_scaling_initialisation():
    torch.manual_seed(0)
    layer = vae.variance_scaling_(nn.Linear(500, 800))
    std = math.sqrt(1.3 * 2 / 500)
    assert torch.all(layer.bias == 0)
    assert layer.weight.abs().max() <= 2 * std + 1e-6  # truncated at two standard deviations
    # TF's truncated normal with stddev sqrt(1.3 * 2 / fan_in) has the He variance 2 / fan_in
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / 500), rel=0.02)


def test_kl_matches_the_closed_form():
    torch.manual_seed(0)
    mu, sigma = torch.randn(50, 4, dtype=torch.float64), torch.rand(50, 4, dtype=torch.float64) * 2 + 0.05
    q = torch.distributions.Normal(mu, sigma)
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(sigma))
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    assert torch.allclose(vae.kl_divergence(mu, sigma), expected, atol=1e-5)
    assert torch.all(vae.kl_divergence(torch.zeros(3, 2), torch.ones(3, 2)).abs() < 1e-6)


def clipped_sigmoid_log_likelihood(logits, x):
    """The original TF formula: y = clip(sigmoid(logits), 1e-8, 1 - 1e-8); sum x log y + (1 - x) log(1 - y)."""
    y = torch.sigmoid(logits.double()).clamp(1e-8, 1 - 1e-8)
    x = x.double()
    return (x * torch.log(y) + (1 - x) * torch.log(1 - y)).sum(-1)


def test_logits_likelihood_agrees_with_clipped_sigmoid():
    torch.manual_seed(0)
    model = vae.VAE(dim_z=20, n_hidden=500).eval()
    x = images(64)
    with torch.no_grad():
        logits = model(x)[0]
    ours = -vae.neg_log_likelihood(logits, x)
    assert (ours.double() - clipped_sigmoid_log_likelihood(logits, x)).abs().max() < 1e-3
    wide = torch.randn(64, 784) * 3  # confident predictions (|logit| up to ~15), still inside the clip at 18.4
    assert (-vae.neg_log_likelihood(wide, x).double() - clipped_sigmoid_log_likelihood(wide, x)).abs().max() < 1e-3


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = vae.VAE(dim_z=4, n_hidden=64)
    x = images(16)
    model.train()
    assert not torch.equal(model.encoder(x)[0], model.encoder(x)[0])
    model.eval()
    assert torch.equal(model.encoder(x)[0], model.encoder(x)[0])
    assert torch.equal(model.decoder(torch.ones(3, 4)), model.decoder(torch.ones(3, 4)))


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    model = vae.VAE(dim_z=2, n_hidden=64)
    optimizer = vae.adam(model, 1e-3)
    x = images(64)
    first = vae.train_epoch(model, optimizer, [(x, x)])[0].item()
    last = vae.train_epoch(model, optimizer, [(x, x)] * 50)[0].item()
    assert last < first - 50, (first, last)


def test_train_epoch_averages_and_stops_when_asked():
    torch.manual_seed(0)
    model = vae.VAE(dim_z=2, n_hidden=16)
    optimizer = vae.adam(model, 1e-3)
    x = images(8)
    steps = []
    mean = vae.train_epoch(model, optimizer, [(x, x)] * 3, on_step=steps.append)
    assert len(steps) == 3
    assert torch.allclose(mean, torch.stack(steps).mean(0))
    calls = []
    assert vae.train_epoch(model, optimizer, [(x, x)] * 3, should_stop=lambda: calls.append(1) or len(calls) > 2) is None
    assert len(calls) == 3  # asked before each batch; stopped before the third


@pytest.fixture(scope="module")
def trained():
    """A small VAE trained for a few hundred steps on synthetic digits, and 200 test images."""
    torch.manual_seed(0)
    model = vae.VAE(dim_z=2, n_hidden=64)
    optimizer = vae.adam(model, 3e-3)
    x = images(512)
    for _ in range(40):
        vae.train_epoch(model, optimizer, [(x[i:i + 64], x[i:i + 64]) for i in range(0, 512, 64)])
    return model.eval(), images(200, seed=1)


def test_iw_k1_matches_the_elbo_in_expectation(trained):
    model, x = trained
    torch.manual_seed(1)
    repeats = 50
    iw = torch.stack([vae.iw_log_likelihood(model, x, x, 1) for _ in range(repeats)])  # (repeats, images)
    elbo = torch.stack([-vae.evaluate(model, x, x)[0] for _ in range(repeats)])
    standard_error = iw.mean(1).std().item() / math.sqrt(repeats)
    assert abs(iw.mean().item() - elbo.mean().item()) < 4 * standard_error + 0.05


def test_iw_bound_is_above_the_elbo_and_tightens_with_k(trained):
    model, x = trained
    torch.manual_seed(2)
    elbo = -vae.evaluate(model, x, x)[0].item()
    bounds = [vae.mean_log_likelihood(model, x, x, k) for k in (1, 10, 100)]
    assert bounds[0] < bounds[1] < bounds[2]
    assert bounds[2] > elbo + 0.5
    assert bounds[1] - bounds[0] > bounds[2] - bounds[1] > 0  # diminishing gains


def test_iw_chunking_gives_the_same_estimate(trained):
    model, x = trained
    torch.manual_seed(3)
    whole = vae.iw_log_likelihood(model, x[:20], x[:20], 400, max_rows=20 * 400)
    chunked = vae.iw_log_likelihood(model, x[:20], x[:20], 400, max_rows=50)  # 2 samples per chunk
    assert whole.shape == chunked.shape == (20,)
    assert (whole - chunked).abs().mean() < 0.3


def test_mean_abs_error_of_noisy_and_restored_inputs(trained):
    model, x = trained
    noisy = (x + 0.25).clamp(0, 1)
    torch.manual_seed(4)
    got_noisy, got_restored = vae.mean_abs_error(model, noisy, x, batch_size=64)  # batches of 64, 64, 64, 8
    torch.manual_seed(4)
    expected = (model.reconstruct(noisy) - x).abs().mean().item()
    assert got_noisy == pytest.approx((noisy - x).abs().mean().item())
    assert got_restored == pytest.approx(expected, rel=1e-5)
    assert got_restored < got_noisy  # a trained model pulls the shifted images back towards the data
