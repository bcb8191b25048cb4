"""vae.py: layers, initialisation, -ELBO terms, dropout, training, bf16, the importance-weighted bound,
DReG, and the Python API."""
import copy
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import training
import vae
from config import VAEConfig
from conftest import N_TEST, ROOT, checkpoint_file, conditional, images, write_mnist


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


def test_shapes_and_positive_sigma():
    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(dim_z=5, n_hidden=32))
    x = images(7)
    mu, sigma = model.encoder(x)
    assert mu.shape == sigma.shape == (7, 5)
    assert (sigma >= 1e-6).all()
    logits, mu2, sigma2 = model(x)
    assert logits.shape == (7, 784)
    objective, loss, nll, kl = model.loss(x, x)
    assert objective is loss
    assert loss.shape == () and loss.item() == pytest.approx(nll.item() + kl.item(), rel=1e-6)
    mu_api, sigma_api = model.eval().encode(x.reshape(7, 1, 28, 28))
    assert torch.equal(mu_api, model.encoder(x)[0]) and torch.equal(sigma_api, model.encoder(x)[1])
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
    model = vae.VAE(VAEConfig(dim_z=20, n_hidden=500)).eval()
    x = images(64)
    with torch.no_grad():
        logits = model(x)[0]
    ours = -vae.neg_log_likelihood(logits, x)
    assert (ours.double() - clipped_sigmoid_log_likelihood(logits, x)).abs().max() < 1e-3
    wide = torch.randn(64, 784) * 3  # confident predictions (|logit| up to ~15), still inside the clip at 18.4
    assert (-vae.neg_log_likelihood(wide, x).double() - clipped_sigmoid_log_likelihood(wide, x)).abs().max() < 1e-3


def test_the_likelihoods_softplus_is_within_1e7_of_the_exact_one_and_has_its_gradient():
    logits = torch.cat([torch.linspace(-40.0, 40.0, 80001), torch.tensor([-math.inf, math.inf, 0.0, math.nan])])
    exact = torch.nn.functional.softplus(logits.double())
    ours = vae.Softplus.apply(logits)
    error = (ours.double() - exact)[:-4].abs()
    assert (error <= 2 * torch.finfo(torch.float32).eps * exact[:-4].clamp(min=1.0)).all()  # two roundings at most
    assert (error[logits[:-4] < 0.0] < 1e-7).all()  # each pixel's value, where it is below log 2
    assert ours[-4:-1].tolist() == [0.0, math.inf, torch.tensor(math.log(2.0)).item()] and ours[-1].isnan()
    assert torch.autograd.gradcheck(vae.Softplus.apply, ((torch.randn(40, dtype=torch.float64) * 8).requires_grad_(),))


def test_the_iwae_log_likelihood_is_the_bernoulli_one():
    wide = torch.randn(5, 64, 784, dtype=torch.float64) * 8  # logits for K = 5 samples of 64 images
    x = images(64).double()
    mu, sigma, eps = (torch.zeros(*shape, dtype=torch.float64) for shape in ((64, 2), (64, 2), (5, 64, 2)))
    log_px_z = vae.log_weights(lambda z, y: wide.reshape(5 * 64, 784), x, mu, sigma + 1, eps)[0]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(wide, x.expand(5, 64, 784), reduction="none")
    assert (log_px_z + bce.sum(-1)).abs().max() < 1e-9


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(dim_z=4, n_hidden=64))
    x = images(16)
    model.train()
    assert not torch.equal(model.encoder(x)[0], model.encoder(x)[0])
    model.eval()
    assert torch.equal(model.encoder(x)[0], model.encoder(x)[0])
    assert torch.equal(model.decoder(torch.ones(3, 4)), model.decoder(torch.ones(3, 4)))


def test_keep_prob_one_means_a_deterministic_training_pass_given_z():
    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(dim_z=4, n_hidden=64, keep_prob=1.0)).train()
    x, z = images(16), torch.randn(16, 4)
    assert torch.equal(model.encoder(x)[0], model.encoder(x)[0])
    assert torch.equal(model.decoder(z), model.decoder(z))
    half = vae.VAE(VAEConfig(dim_z=4, n_hidden=64, keep_prob=0.5)).train()
    kept = (half.encoder.net[2](torch.ones(1000, 100)) != 0).float().mean().item()
    assert abs(kept - 0.5) < 0.01


def test_iw_train_1_is_exactly_the_vae_loss():
    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(dim_z=3, n_hidden=32))
    x = images(16)
    torch.manual_seed(7)
    objective, loss, nll, kl = model.loss(x, x, k=1)
    torch.manual_seed(7)
    logits, mu, sigma = model(x)  # the same z: the same draws of dropout and eps in the same order
    elbo = vae.neg_log_likelihood(logits, x).mean() + vae.kl_divergence(mu, sigma).mean()
    assert torch.equal(objective, elbo) and torch.equal(loss, elbo)


def test_iwae_bound_is_at_least_the_elbo():
    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(dim_z=3, n_hidden=32, keep_prob=1.0))
    x = images(32)
    with torch.no_grad():
        mu, sigma = model.encoder(x)
        log_px_z, log_prior_ratio, _ = vae.log_weights(model.decoder, x, mu, sigma, torch.randn(5, 32, 3))
        log_w = log_px_z + log_prior_ratio
        assert (vae.iw_bound(log_w) >= log_w.mean(0) - 1e-4).all()  # Jensen, sample by sample
        bounds = [model.loss(x, x, k=5)[1].item() for _ in range(200)]
        elbos = [model.loss(x, x, k=1)[1].item() for _ in range(200)]
    assert sum(bounds) / 200 < sum(elbos) / 200 - 0.1  # -L_5 below the -ELBO on a fixed model and batch


def independent_iwae_loss(model, x, eps):
    """The IWAE loss from torch.distributions in float64, one sample at a time: -mean_n log mean_k w_nk."""
    mu, sigma = (t.double() for t in model.encoder(x))
    log_w = []
    for e in eps.double():
        z = mu + sigma * e
        logits = model.decoder(z.float()).double()
        log_px_z = torch.distributions.Bernoulli(logits=logits).log_prob(x.double()).sum(-1)
        log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_qz = torch.distributions.Normal(mu, sigma).log_prob(z).sum(-1)
        log_w.append(log_px_z + log_pz - log_qz)
    log_w = torch.stack(log_w)
    return -(torch.logsumexp(log_w, 0) - math.log(len(eps))).mean()


def close(a, b):
    """Gradients equal to float precision: relative to the whole tensor's size."""
    return (a - b.float()).norm() <= 1e-4 * b.norm() + 1e-6


def test_iwae_gradient_matches_an_independent_computation():
    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(dim_z=3, n_hidden=32, keep_prob=1.0))
    x = torch.bernoulli(images(16), generator=torch.Generator().manual_seed(0))  # Bernoulli's support
    torch.manual_seed(3)
    eps = torch.randn(4, 16, 3)
    torch.manual_seed(3)  # model.loss draws the same eps
    objective, loss, nll, kl = model.loss(x, x, k=4)
    model.zero_grad()
    objective.backward()
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    reference = independent_iwae_loss(model, x, eps)
    reference.backward()
    assert objective.item() == pytest.approx(reference.item(), rel=1e-5)
    assert all(close(a, p.grad) for a, p in zip(ours, model.parameters(), strict=True))
    # the weights are not detached: detaching them (a known bug) gives another gradient
    model.zero_grad()
    mu, sigma = model.encoder(x)
    log_px_z, log_prior_ratio, _ = vae.log_weights(model.decoder, x, mu, sigma, eps)
    log_w = log_px_z + log_prior_ratio
    (-(torch.softmax(log_w, 0).detach() * log_w).sum(0).mean()).backward(retain_graph=True)  # by hand
    assert all(close(a, p.grad) for a, p in zip(ours, model.parameters(), strict=True))
    model.zero_grad()
    (-(log_w.mean(0)).mean()).backward()  # equal weights: the VAE's gradient, not the IWAE's
    assert not all(close(a, p.grad) for a, p in zip(ours, model.parameters(), strict=True))


def gradients(model, x, k, gradient, seed, kl_weight=1.0):
    """The loss's value and each parameter's gradient for one draw of eps (the seed's)."""
    model.zero_grad()
    torch.manual_seed(seed)
    objective, loss, nll, kl = model.loss(x, x, k, kl_weight, gradient)
    objective.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def independent_dreg_encoder_gradient(model, x, eps):
    """DReG's encoder gradient from its definition, in float64 on a float64 copy of the model: the gradient of
    the mean over images of -sum_k w_k^2 d log w_k / d z_k . z_k(phi), where w_k are the normalised weights
    and log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) with q's parameters held fixed."""
    model = copy.deepcopy(model).double()
    x, eps = x.double(), eps.double()
    mu, sigma = model.encoder(x)
    mu, sigma = mu.double(), sigma.double()
    z = (mu + sigma * eps).detach().requires_grad_()  # (K, N, dim_z), a leaf: d log w / d z by autograd
    logits = model.decoder.net(z)
    log_w = (torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
             + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
             - torch.distributions.Normal(mu.detach(), sigma.detach()).log_prob(z).sum(-1))
    d_log_w_dz, = torch.autograd.grad(log_w.sum(), z)
    w = torch.softmax(log_w.detach(), 0)
    coefficient = -(w.square().unsqueeze(-1) * d_log_w_dz) / x.shape[0]
    surrogate = (coefficient * (mu + sigma * eps)).sum()  # its gradient: coefficient . dz/dphi
    encoder = dict(model.encoder.named_parameters())
    return dict(zip((f"encoder.{n}" for n in encoder), torch.autograd.grad(surrogate, list(encoder.values())),
                    strict=True))


def test_dreg_keeps_the_bound_and_the_decoder_gradient_and_changes_the_encoder_s():
    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(dim_z=3, n_hidden=32, keep_prob=1.0))
    x = torch.bernoulli(images(16), generator=torch.Generator().manual_seed(0))
    iwae_loss, iwae = gradients(model, x, 4, "iwae", seed=3)
    dreg_loss, dreg = gradients(model, x, 4, "dreg", seed=3)
    assert torch.equal(iwae_loss, dreg_loss)  # the same bound, to the bit
    decoder = [name for name in dreg if name.startswith("decoder.")]
    encoder = [name for name in dreg if name.startswith("encoder.")]
    assert all(torch.allclose(dreg[n], iwae[n], rtol=1e-6, atol=1e-7) for n in decoder)
    torch.manual_seed(3)
    reference = independent_dreg_encoder_gradient(model, x, torch.randn(4, 16, 3))
    for name in encoder:
        assert close(dreg[name], reference[name]), name  # float32 against float64
        assert not torch.allclose(dreg[name], iwae[name], rtol=1e-3, atol=1e-6), name
    # the same model in float64: the formula itself, to 1e-5 relative
    _, dreg64 = gradients(copy.deepcopy(model).double(), x.double(), 4, "dreg", seed=3)
    for name in encoder:
        assert (dreg64[name] - reference[name]).norm() <= 1e-5 * reference[name].norm(), name


def test_dreg_under_warm_up_weights_the_path_gradient_by_the_score_term_s_share():
    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(dim_z=3, n_hidden=32, keep_prob=1.0))
    x = torch.bernoulli(images(16), generator=torch.Generator().manual_seed(0))
    _, iwae = gradients(model, x, 4, "iwae", seed=3, kl_weight=0.0)
    _, dreg = gradients(model, x, 4, "dreg", seed=3, kl_weight=0.0)
    # weight 0: log w = log p(x|z) does not depend on q's parameters but through z, so both are the same
    assert all(torch.allclose(dreg[n], iwae[n], rtol=1e-5, atol=1e-7) for n in dreg)
    _, iwae = gradients(model, x, 4, "iwae", seed=3, kl_weight=0.5)
    _, dreg = gradients(model, x, 4, "dreg", seed=3, kl_weight=0.5)
    assert not all(torch.allclose(dreg[n], iwae[n], rtol=1e-3, atol=1e-6) for n in dreg if n.startswith("encoder."))


def test_output_bias_starts_the_decoder_at_the_mean_image():
    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(dim_z=3, n_hidden=32))
    mean = images(100).mean(0)
    model.init_output_bias(mean)
    bias = model.decoder.net[-1].bias
    assert torch.allclose(torch.sigmoid(bias), mean.clamp(1e-3, 1 - 1e-3), atol=1e-6)


def test_iw_k1_matches_the_elbo_in_expectation(trained):
    model, x = trained
    torch.manual_seed(1)
    repeats = 50
    iw = torch.stack([vae.iw_log_likelihood(model, x, x, 1) for _ in range(repeats)])  # (repeats, images)
    elbo = torch.tensor([-training.evaluate(model, x, x).loss for _ in range(repeats)])
    standard_error = iw.mean(1).std().item() / math.sqrt(repeats)
    assert abs(iw.mean().item() - elbo.mean().item()) < 4 * standard_error + 0.05


def test_iw_bound_is_above_the_elbo_and_tightens_with_k(trained):
    model, x = trained
    torch.manual_seed(2)
    elbo = -training.evaluate(model, x, x).loss
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


def test_iw_memory_stays_bounded_whatever_k():
    """K = 50,000 samples of 100 images: every chunk's weights kept and joined would take 40 MB; a running
    log-sum-exp holds one chunk (500 samples here). Measured in a fresh process, whose peak memory is this call's."""
    code = (
        "import resource, torch, vae\n"
        "from config import VAEConfig\n"
        "torch.manual_seed(0)\n"
        "model = vae.VAE(VAEConfig(dim_z=1, n_hidden=1)).eval()\n"
        "model.decoder.net = torch.nn.Linear(1, 1)  # one pixel: the memory measured is the weights', not the images'\n"
        "x_hat, x = torch.ones(100, 784), torch.ones(100, 1)\n"
        "vae.iw_log_likelihood(model, x_hat, x, 5_000, max_rows=50_000)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "vae.iw_log_likelihood(model, x_hat, x, 50_000, max_rows=50_000)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 20_000, done.stdout  # kB: under 20 MB more than at K = 5,000


def test_bf16_runs_the_products_in_bfloat16_and_returns_fp32():
    model = vae.VAE(VAEConfig(dim_z=3, n_hidden=32))
    seen = []
    model.decoder.net[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    x = images(4)
    with training.autocast(torch.device("cpu"), "bf16"):
        _, loss, nll, kl = model.loss(x, x)
        iw_loss = model.loss(x, x, k=3)[1]
        logits, mu, sigma = model(x)
    assert seen == [torch.bfloat16] * 3
    assert {t.dtype for t in (loss, nll, kl, iw_loss, logits, mu, sigma)} == {torch.float32}
    with training.autocast(torch.device("cpu"), "fp32"):
        model(x)
    assert seen[-1] == torch.float32


def test_api_shapes_and_sampling():
    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(dim_z=2, n_hidden=16)).eval()
    x = images(6)
    for shaped in (x, x.reshape(6, 28, 28), x.reshape(6, 1, 28, 28)):
        mu, sigma = model.encode(shaped)
        assert mu.shape == sigma.shape == (6, 2)
        assert model.reconstruct(shaped).shape == (6, 784)
    for bad in (x.reshape(6, 2, 392), x[0], x.long(), x.numpy()):
        with pytest.raises(ValueError, match="expected"):
            model.encode(bad)
    a = model.sample(4, generator=torch.Generator().manual_seed(3))
    b = model.sample(4, generator=torch.Generator().manual_seed(3))
    assert a.shape == (4, 784) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1


def readme_snippet():
    """The Python block of the README's "Use a trained model" section."""
    with open(os.path.join(ROOT, "README.md")) as f:
        section = f.read().split("## Use a trained model", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readmes_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    write_mnist(tmp_path / "data")
    (tmp_path / "results").mkdir()
    torch.manual_seed(0)
    checkpoint_file(str(tmp_path / "results"), vae.VAE(VAEConfig(dim_z=3, n_hidden=16)))
    (tmp_path / "results" / "cvae").mkdir()
    checkpoint_file(str(tmp_path / "results" / "cvae"), vae.VAE(VAEConfig(dim_z=2, n_hidden=16, conditional=True)))
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_snippet(), "README.md", "exec"), {})
    shapes = capsys.readouterr().out.strip().splitlines()
    assert shapes == [f"torch.Size([16, 784]) torch.Size([{N_TEST}, 3]) torch.Size([8, 784]) torch.Size([4, 10, 784])",
                      "torch.Size([10, 784]) torch.Size([10, 784]) torch.Size([4, 10, 784])"]


# the API's inputs, long evaluations


def test_the_model_and_load_check_their_arguments(tmp_path):
    for args in ((0, 5), (-1, 5), ("a", 5), (2.5, 5), (True, 5), (2, 5, 2.0), (2, 5, 0.0), (2, 5, float("nan")),
                 (2, 5, 0.9, 0)):
        with pytest.raises(ValueError, match="expected"):
            VAEConfig(*args)
    with pytest.raises(ValueError, match="expected a VAEConfig"):
        vae.VAE(2)
    path = checkpoint_file(str(tmp_path), vae.VAE(VAEConfig(2, 8)))
    for bad in (dict(path=None), dict(path=3), dict(path=path, device="bogus"), dict(path=path, device=None)):
        with pytest.raises(ValueError, match="expected"):
            vae.load(**bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            vae.load(path, device="cuda")
    model = vae.load(path)
    assert model.sample(np.int64(2)).shape == (2, 784)
    for bad in (dict(n=2, generator="x"), dict(n=10**30), dict(n=-1)):
        with pytest.raises(ValueError, match="expected|of memory"):
            model.sample(**bad)
    x = images(2)
    for bad in (x.to_sparse(), x.to("meta")):
        with pytest.raises(ValueError, match="expected a dense"):
            model.encode(bad)


def test_a_long_evaluation_stops_between_chunks_whatever_k(trained):
    model, x = trained
    chunks = []

    class Stop(Exception):
        pass

    def on_chunk():
        chunks.append(1)
        if len(chunks) == 2:
            raise Stop
    with pytest.raises(Stop):
        vae.mean_log_likelihood(model, x, x, 10**9, on_chunk=on_chunk)  # 10^11 decoder rows if it ran on
    assert len(chunks) == 2
    assert vae.iw_chunks(200, 10**9) == 2 * math.ceil(10**9 / (vae.IW_ROWS // vae.IW_BATCH))
    assert vae.iw_chunks(150, 5) == 2


def test_the_label_reaches_the_encoder_and_the_decoder():
    model = conditional()
    z, x = torch.randn(4, 2), images(4)
    assert not torch.allclose(model.decode(z, labels=3), model.decode(z, labels=8))
    assert not torch.allclose(model.encode(x, labels=3)[0], model.encode(x, labels=8)[0])
    plain = vae.VAE(VAEConfig(2, 16))
    assert plain.encoder.net[0].in_features == 784 and plain.decoder.net[0].in_features == 2


def test_ten_sevens_are_drawn_and_are_the_decoded_prior_samples():
    model = conditional()
    sevens = model.sample(10, generator=torch.Generator().manual_seed(4), labels=7)
    z = torch.randn(10, 2, generator=torch.Generator().manual_seed(4))
    assert sevens.shape == (10, 784) and torch.equal(sevens, model.decode(z, labels=7))


def test_the_iwae_bound_decodes_each_sample_with_its_own_images_label():
    model = conditional(dim_z=3)
    x, y = (images(4) > 0.5).float(), torch.tensor([0, 3, 3, 9])
    mu, sigma = model.encoder(x, y)
    eps = torch.randn(5, 4, 3)
    log_px_z, _, _ = vae.log_weights(model.decoder, x, mu, sigma, eps, y=y)
    one_by_one = torch.stack([-vae.neg_log_likelihood(model.decoder(mu + sigma * e, y), x) for e in eps])
    assert torch.allclose(log_px_z, one_by_one, atol=1e-4)
    assert model.loss(x, x, k=5, y=y)[1].item() > 0  # the IWAE bound of a conditional model


def test_interpolation_runs_from_one_mean_to_the_other():
    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(2, 16)).eval()
    a, b = images(3, 1), images(3, 2)
    path = model.interpolate(a, b, 5)
    mu_a, mu_b = model.encode(a)[0], model.encode(b)[0]
    assert path.shape == (3, 5, 784)
    assert torch.allclose(path[:, 0], model.decode(mu_a), atol=1e-6)
    assert torch.allclose(path[:, -1], model.decode(mu_b), atol=1e-6)
    assert torch.allclose(path[:, 2], model.decode((mu_a + mu_b) / 2), atol=1e-6)
    for steps in (1, 0, 2.0, True):
        with pytest.raises(ValueError, match="steps"):
            model.interpolate(a, b, steps)
    with pytest.raises(ValueError, match="as many images"):
        model.interpolate(a, b[:2], 4)


def test_a_conditional_interpolation_changes_the_label_halfway():
    model = conditional()
    a, b = images(2, 1), images(2, 2)
    y_a, y_b = torch.tensor([1, 2]), torch.tensor([7, 8])
    path = model.interpolate(a, b, 4, labels=(y_a, y_b))
    mu_a, mu_b = model.encode(a, labels=y_a)[0], model.encode(b, labels=y_b)[0]
    for i, t in enumerate((0, 1 / 3, 2 / 3, 1)):
        z = mu_a + t * (mu_b - mu_a)
        assert torch.allclose(path[:, i], model.decode(z, labels=y_a if t < 0.5 else y_b), atol=1e-5), i
    with pytest.raises(ValueError, match="labels=\\(labels_a, labels_b\\)"):
        model.interpolate(a, b, 4, labels=y_a)
