"""The VAE of Kingma & Welling: Gaussian MLP encoder, Bernoulli MLP decoder, -ELBO, likelihood bounds."""
import math

import torch
import torch.nn.functional as F
from torch import nn

DIM_IMG = 28 * 28
KEEP_PROB = 0.9  # the original's dropout keep probability while training
LOG_2PI = math.log(2.0 * math.pi)
# Keep a unit when a uniform 32-bit integer (signed view) falls below this: P(keep) = 0.9 to within 1e-10.
KEEP_BELOW = -2**31 + int(KEEP_PROB * 2**32)


def variance_scaling_(linear):
    """TF's variance_scaling_initializer (He, fan-in): truncated normal, std sqrt(1.3 * 2 / fan_in); zero bias."""
    std = math.sqrt(1.3 * 2.0 / linear.in_features)
    nn.init.trunc_normal_(linear.weight, std=std, a=-2.0 * std, b=2.0 * std)
    nn.init.zeros_(linear.bias)
    return linear


class Dropout(nn.Module):
    """Inverted dropout with keep probability KEEP_PROB while training, as tf.nn.dropout.

    Same rule as nn.Dropout, but each unit's uniform draw is a 32-bit integer, two from one 64-bit draw
    of the generator, where nn.Dropout's bernoulli_ spends a double per unit: about half the time on CPU.
    """

    def forward(self, h):
        if not self.training:
            return h
        bits = torch.empty((h.numel() + 1) // 2, dtype=torch.int64, device=h.device).random_(-2**63, None)
        keep = bits.view(torch.int32)[:h.numel()].view(h.shape) < KEEP_BELOW
        return h * (keep * (1.0 / KEEP_PROB))  # a float mask, so backward is one multiply


def mlp(n_in, n_hidden, n_out, first_act, second_act):
    """Two dropout-regularised hidden layers and a linear output, as both of the original's MLPs."""
    return nn.Sequential(
        variance_scaling_(nn.Linear(n_in, n_hidden)), first_act, Dropout(),
        variance_scaling_(nn.Linear(n_hidden, n_hidden)), second_act, Dropout(),
        variance_scaling_(nn.Linear(n_hidden, n_out)),
    )


class Encoder(nn.Module):
    """Gaussian MLP encoder q(z|x): ELU then tanh hidden layers; returns mu and sigma."""

    def __init__(self, dim_z, n_hidden, dim_img=DIM_IMG):
        super().__init__()
        self.dim_z = dim_z
        self.net = mlp(dim_img, n_hidden, 2 * dim_z, nn.ELU(inplace=True), nn.Tanh())

    def forward(self, x):
        params = self.net(x)
        mu, s = params[:, :self.dim_z], params[:, self.dim_z:]
        return mu, 1e-6 + F.softplus(s)


class Decoder(nn.Module):
    """Bernoulli MLP decoder p(x|z): tanh then ELU hidden layers; returns the pixels' logits."""

    def __init__(self, dim_z, n_hidden, dim_img=DIM_IMG):
        super().__init__()
        self.net = mlp(dim_z, n_hidden, dim_img, nn.Tanh(), nn.ELU(inplace=True))

    def forward(self, z):
        return self.net(z)


def neg_log_likelihood(logits, x):
    """-log p(x|z) per image: the Bernoulli likelihood from logits, summed over pixels."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def kl_divergence(mu, sigma):
    """KL(q(z|x) || N(0, I)) per image, as the original: 0.5 * sum(mu^2 + sigma^2 - log(1e-8 + sigma^2) - 1)."""
    s2 = sigma.square()
    return 0.5 * (mu.square() + s2 - torch.log(1e-8 + s2) - 1.0).sum(-1)


class VAE(nn.Module):
    """Encoder, reparameterised sample z = mu + sigma * eps, decoder."""

    def __init__(self, dim_z, n_hidden, dim_img=DIM_IMG):
        super().__init__()
        self.dim_z, self.n_hidden = dim_z, n_hidden
        self.encoder = Encoder(dim_z, n_hidden, dim_img)
        self.decoder = Decoder(dim_z, n_hidden, dim_img)

    def forward(self, x_hat):
        """Encode x_hat, sample z, decode; returns logits, mu, sigma."""
        mu, sigma = self.encoder(x_hat)
        z = torch.addcmul(mu, sigma, torch.randn_like(mu))
        return self.decoder(z), mu, sigma

    def loss(self, x_hat, x):
        """-ELBO averaged over the batch, with its two terms: (loss, -log-likelihood, KL)."""
        logits, mu, sigma = self(x_hat)
        nll = neg_log_likelihood(logits, x).mean()
        kl = kl_divergence(mu, sigma).mean()
        return nll + kl, nll, kl

    @torch.no_grad()
    def reconstruct(self, x_hat):
        """Pixel probabilities of the decoded sample of each input, as the original's PRR images."""
        return torch.sigmoid(self(x_hat)[0])

    @torch.no_grad()
    def decode(self, z):
        """Pixel probabilities for given latent vectors."""
        return torch.sigmoid(self.decoder(z))

    @torch.no_grad()
    def latent_mean(self, x_hat):
        """The encoder's mean mu for each input."""
        return self.encoder(x_hat)[0]


@torch.no_grad()
def mean_abs_error(model, x_hat, x, batch_size=1000):
    """Mean absolute pixel error against x of the inputs x_hat and of their reconstructions: (input, restored)."""
    model.eval()
    restored = sum((model.reconstruct(x_hat[i:i + batch_size]) - x[i:i + batch_size]).abs().sum().item()
                   for i in range(0, len(x), batch_size))
    return (x_hat - x).abs().mean().item(), restored / x.numel()


def adam(model, learn_rate):
    """Adam with the fused kernel where the device has one (same update, one pass over the weights)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=learn_rate, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(model.parameters(), lr=learn_rate)


def train_epoch(model, optimizer, batches, should_stop=None, on_step=None):
    """One pass of Adam over (x_hat, x) batches; the mean (loss, nll, kl), or None if should_stop() said so."""
    model.train()
    sums, n = torch.zeros(3, device=next(model.parameters()).device), 0
    for x_hat, x in batches:
        if should_stop is not None and should_stop():
            return None
        loss, nll, kl = model.loss(x_hat, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step = torch.stack((loss, nll, kl)).detach()
        sums += step
        n += 1
        if on_step is not None:
            on_step(step)
    return sums / n


@torch.no_grad()
def evaluate(model, x_hat, x, batch_size=1000):
    """Mean (loss, nll, kl) over all images in evaluation mode (no dropout), in batches."""
    model.eval()
    sums = torch.zeros(3, device=x.device)
    for i in range(0, len(x), batch_size):
        loss, nll, kl = model.loss(x_hat[i:i + batch_size], x[i:i + batch_size])
        sums += torch.stack((loss, nll, kl)) * len(x[i:i + batch_size])
    return sums / len(x)


@torch.no_grad()
def iw_log_likelihood(model, x_hat, x, k, max_rows=16384):
    """Importance-weighted bound on log p(x) per image, log mean_k p(x, z_k) / q(z_k|x) (Burda et al. 2015)."""
    model.eval()
    mu, sigma = model.encoder(x_hat)
    b, dim_z = mu.shape
    chunk = max(1, max_rows // b)
    log_w = []
    for start in range(0, k, chunk):
        n = min(chunk, k - start)
        eps = torch.randn(n, b, dim_z, device=x.device)
        z = mu + sigma * eps
        logits = model.decoder(z.reshape(n * b, dim_z)).reshape(n, b, -1)
        log_px_z = -neg_log_likelihood(logits, x.expand(n, -1, -1))
        log_pz = -0.5 * (z.square() + LOG_2PI).sum(-1)
        log_qz = -0.5 * (eps.square() + LOG_2PI).sum(-1) - sigma.log().sum(-1)
        log_w.append(log_px_z + log_pz - log_qz)
    return torch.logsumexp(torch.cat(log_w), 0) - math.log(k)


def mean_log_likelihood(model, x_hat, x, k, batch_size=100):
    """Mean importance-weighted log p(x) bound over a data set, in batches so memory stays bounded."""
    total = sum(iw_log_likelihood(model, x_hat[i:i + batch_size], x[i:i + batch_size], k).sum().item()
                for i in range(0, len(x), batch_size))
    return total / len(x)
