"""The VAE of Kingma & Welling: Gaussian MLP encoder, Bernoulli MLP decoder, the -ELBO, the importance-weighted
bounds (IWAE, DReG) and the likelihood bound; vae.load reads a trained model back."""
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

import checkpoint
import hardware
import inputs
from config import DIM_IMG, IW_BATCH, IW_ROWS, KEEP_PROB, VAEConfig
from mnist_data import NUM_LABELS


def variance_scaling_(linear):
    """TF's variance_scaling_initializer (He, fan-in): truncated normal, std sqrt(1.3 * 2 / fan_in); zero bias."""
    std = math.sqrt(1.3 * 2.0 / linear.in_features)
    nn.init.trunc_normal_(linear.weight, std=std, a=-2.0 * std, b=2.0 * std)
    nn.init.zeros_(linear.bias)
    return linear


class Dropout(nn.Module):
    """Inverted dropout with keep probability keep_prob while training, as tf.nn.dropout; 1.0 is no dropout.

    Same rule as nn.Dropout, but each unit's uniform draw is a 32-bit integer, two from one 64-bit draw
    of the generator, where nn.Dropout's bernoulli_ spends a double per unit: about half the time on CPU.
    """

    def __init__(self, keep_prob=KEEP_PROB):
        super().__init__()
        self.keep_prob = keep_prob
        # keep a unit when its uniform 32-bit integer (signed view) falls below this: P(keep) exact to 1e-10
        self.keep_below = -2**31 + int(keep_prob * 2**32)

    def forward(self, h):
        if not self.training or self.keep_prob == 1.0:
            return h
        bits = torch.empty((h.numel() + 1) // 2, dtype=torch.int64, device=h.device).random_(-2**63, None)
        keep = bits.view(torch.int32)[:h.numel()].view(h.shape) < self.keep_below
        return h * keep.to(h.dtype).mul_(1.0 / self.keep_prob)  # a float mask, so backward is one multiply


def mlp(widths, first_act, second_act, keep_prob):
    """Two dropout-regularised hidden layers and a linear output, widths (input, hidden, hidden, output), as
    both of the original's MLPs."""
    n_in, first, second, n_out = widths
    return nn.Sequential(
        variance_scaling_(nn.Linear(n_in, first)), first_act, Dropout(keep_prob),
        variance_scaling_(nn.Linear(first, second)), second_act, Dropout(keep_prob),
        variance_scaling_(nn.Linear(second, n_out)),
    )


def at_least_fp32(t):
    """A bf16 or fp16 result as fp32; fp32 and fp64 as they are (a float64 model stays float64)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def with_label(h, y, conditional):
    """The input h, with the one-hot label y of each row appended when the network is conditional."""
    if not conditional:
        return h
    if y is None:
        raise ValueError("a conditional network needs the label of each input")
    return torch.cat((h, F.one_hot(y, NUM_LABELS).to(h.dtype)), 1)


class Encoder(nn.Module):
    """Gaussian MLP encoder q(z|x), or q(z|x, y) when conditional: ELU then tanh hidden layers; returns mu and
    sigma."""

    def __init__(self, config):
        super().__init__()
        self.dim_z, self.conditional = config.dim_z, config.conditional
        self.net = mlp(config.encoder_widths(), nn.ELU(inplace=True), nn.Tanh(), config.keep_prob)

    def forward(self, x, y=None):
        params = at_least_fp32(self.net(with_label(x, y, self.conditional)))  # fp32, also after bf16 products
        mu, s = params[:, :self.dim_z], params[:, self.dim_z:]
        return mu, 1e-6 + F.softplus(s)


class Decoder(nn.Module):
    """Bernoulli MLP decoder p(x|z), or p(x|z, y) when conditional: tanh then ELU hidden layers; returns the
    pixels' logits."""

    def __init__(self, config):
        super().__init__()
        self.conditional = config.conditional
        self.net = mlp(config.decoder_widths(), nn.Tanh(), nn.ELU(inplace=True), config.keep_prob)

    def forward(self, z, y=None):
        return at_least_fp32(self.net(with_label(z, y, self.conditional)))  # fp32 logits, also after bf16


def neg_log_likelihood(logits, x):
    """-log p(x|z) per image: the Bernoulli likelihood from logits, summed over pixels."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


class Softplus(torch.autograd.Function):
    """softplus(l) = max(l, 0) + log(1 + exp(-|l|)) with the gradient sigmoid(l), without torch's log1p, which
    is slow on a CPU (docs/performance.md); in fp32 within 1e-7 of the exact value for l < 0 (0 below -16.6,
    where that is under 6e-8) and within two roundings above."""

    @staticmethod
    def forward(ctx, logits):
        ctx.save_for_backward(logits)
        return logits.abs().neg_().exp_().add_(1.0).log_().add_(logits.clamp(min=0.0))

    @staticmethod
    def backward(ctx, grad):
        logits, = ctx.saved_tensors
        return grad * torch.sigmoid(logits)


def softplus(logits):
    """The likelihood's softplus: Softplus on a CPU, torch's own (one kernel) on other devices."""
    return Softplus.apply(logits) if logits.device.type == "cpu" else F.softplus(logits)


def kl_divergence(mu, sigma):
    """KL(q(z|x) || N(0, I)) per image, as the original: 0.5 * sum(mu^2 + sigma^2 - log(1e-8 + sigma^2) - 1)."""
    s2 = sigma.square()
    return 0.5 * (mu.square() + s2 - torch.log(1e-8 + s2) - 1.0).sum(-1)


class VAE(nn.Module):
    """Encoder, reparameterised sample z = mu + sigma * eps, decoder, built from a VAEConfig; conditional: both
    also see the digit's label y (the CVAE, "M2" of Kingma et al. 2014 with every label known), and the bounds
    are of log p(x|y).

    Inside (forward, loss and the functions that train and evaluate), y is the (N,) int64 labels and is used
    only by a conditional model; the methods for users check their labels= against the model's kind.
    """

    def __init__(self, config):
        super().__init__()
        if not isinstance(config, VAEConfig):
            raise ValueError(f"expected a VAEConfig, got {type(config).__name__}")
        self.config = config
        self.dim_z, self.n_hidden, self.keep_prob = config.dim_z, config.n_hidden, config.keep_prob
        self.conditional = config.conditional
        self.encoder, self.decoder = Encoder(config), Decoder(config)

    @property
    def device(self):
        return next(self.parameters()).device

    def forward(self, x_hat, y=None):
        """Encode x_hat, sample z, decode; returns logits, mu, sigma."""
        mu, sigma = self.encoder(x_hat, y)
        z = torch.addcmul(mu, sigma, torch.randn_like(mu))
        return self.decoder(z, y), mu, sigma

    def loss(self, x_hat, x, k=1, kl_weight=1.0, gradient="iwae", y=None):
        """The training objective and what it bounds, batch means: (objective, loss, nll, KL).

        k = 1: the -ELBO, nll + KL, with the KL weighted by kl_weight in the objective (warm-up); loss is
        always the weight-1 -ELBO. k > 1: the IWAE bound -log (1/k) sum_k p(x, z_k) / q(z_k|x), one decoder
        pass over all k samples, gradients through the log-sum-exp; loss is that bound with weight 1, and
        nll the mean of -log p(x|z_k) over the k samples. gradient (k > 1): "iwae", the bound's own
        reparameterised gradient, or "dreg", the same value and decoder gradient with the encoder's gradient
        doubly reparameterised (Tucker et al. 2018). y: the labels, for a conditional model.
        """
        if k == 1:
            logits, mu, sigma = self(x_hat, y)
            nll = neg_log_likelihood(logits, x).mean()
            kl = kl_divergence(mu, sigma).mean()
            loss = nll + kl
            return (loss if kl_weight == 1.0 else nll + kl_weight * kl), loss, nll, kl
        mu, sigma = self.encoder(x_hat, y)
        eps = torch.randn(k, *mu.shape, device=mu.device)
        dreg = gradient == "dreg" and torch.is_grad_enabled()
        log_px_z, log_prior_ratio, z = log_weights(self.decoder, x, mu, sigma, eps, stop_q=dreg, y=y)
        bound = iw_bound(log_px_z + log_prior_ratio).mean()
        log_w = log_px_z + log_prior_ratio if kl_weight == 1.0 else log_px_z + kl_weight * log_prior_ratio
        objective = bound if kl_weight == 1.0 else iw_bound(log_w).mean()
        if dreg:
            z.register_hook(dreg_hook(log_w, kl_weight))
        return -objective, -bound, -log_px_z.mean(), kl_divergence(mu, sigma).mean()

    @torch.no_grad()
    def init_output_bias(self, pixel_mean):
        """Start the decoder at the mean image: its output bias the logit of each pixel's mean (as Burda et
        al.'s IWAE code), clamped to [1e-3, 1 - 1e-3]."""
        self.decoder.net[-1].bias.copy_(torch.logit(pixel_mean.clamp(1e-3, 1 - 1e-3)))

    # ---- the API for users: every argument checked by inputs.py

    def labels_for(self, labels, n):
        return inputs.labels_for(self.conditional, labels, n, self.device)

    @torch.no_grad()
    def encode(self, x, labels=None):
        """The posterior q(z|x) (q(z|x, y) with labels) of each image: (mu, sigma). x: (N, 784), (N, 28, 28) or
        (N, 1, 28, 28)."""
        x = inputs.as_rows(x, self.device)
        inputs.check_room(len(x), self.config, self.device)
        return self.encoder(x, self.labels_for(labels, len(x)))

    @torch.no_grad()
    def decode(self, z, labels=None):
        """Pixel probabilities for given latent vectors z, (N, dim_z) (and their labels, for a conditional model)."""
        z = inputs.as_latents(z, self.dim_z, self.device)
        inputs.check_room(len(z), self.config, self.device)
        return torch.sigmoid(self.decoder(z, self.labels_for(labels, len(z))))

    @torch.no_grad()
    def reconstruct(self, x_hat, labels=None):
        """Pixel probabilities of the decoded sample of each input, as the original's PRR images."""
        x_hat = inputs.as_rows(x_hat, self.device)
        inputs.check_room(len(x_hat), self.config, self.device)
        return torch.sigmoid(self(x_hat, self.labels_for(labels, len(x_hat)))[0])

    @torch.no_grad()
    def sample(self, n, generator=None, labels=None):
        """n images from the generative model: pixel probabilities for z ~ N(0, I) (and the given labels, for a
        conditional model: one digit for all, or one per image)."""
        n = inputs.whole_number(n, "a whole number of images of at least 0", 0)
        inputs.check_room(n, self.config, self.device)
        generator = inputs.as_generator(generator, self.device)
        y = self.labels_for(labels, n)
        return torch.sigmoid(self.decoder(torch.randn(n, self.dim_z, generator=generator, device=self.device), y))

    @torch.no_grad()
    def interpolate(self, x_a, x_b, steps, labels=None):
        """Decodes at steps evenly spaced points on the line from each x_a's encoder mean to its x_b's, both
        ends included: pixel probabilities, (N, steps, 784).

        A conditional model takes labels=(labels_a, labels_b), the digits of x_a and x_b: each image is
        encoded with its own, and each point is decoded with its nearer end's (the label changes halfway).
        """
        x_a, x_b = inputs.as_rows(x_a, self.device), inputs.as_rows(x_b, self.device)
        if len(x_a) != len(x_b):
            raise ValueError(f"expected as many images in x_a as in x_b, got {len(x_a)} and {len(x_b)}")
        steps = inputs.whole_number(steps, "steps, a whole number of at least 2", 2)
        inputs.check_room(max(len(x_a), 1) * steps, self.config, self.device)
        if self.conditional and not (isinstance(labels, (tuple, list)) and len(labels) == 2):
            raise ValueError("this model is conditional (--conditional True): give labels=(labels_a, labels_b), "
                             "the digits of x_a and x_b")
        y_a, y_b = (self.labels_for(part, len(x_a)) for part in (labels if self.conditional else (labels, None)))
        mu_a, mu_b = self.encoder(x_a, y_a)[0], self.encoder(x_b, y_b)[0]
        t = torch.linspace(0.0, 1.0, steps, device=mu_a.device)
        z = mu_a[:, None] + t[None, :, None] * (mu_b - mu_a)[:, None]  # (N, steps, dim_z)
        y = torch.where(t < 0.5, y_a[:, None], y_b[:, None]).reshape(-1) if self.conditional else None
        return torch.sigmoid(self.decoder(z.reshape(-1, self.dim_z), y)).reshape(len(x_a), steps, DIM_IMG)


# ---- the importance-weighted bounds

def log_weights(decoder, x, mu, sigma, eps, stop_q=False, y=None):
    """log p(x|z) and log p(z) - log q(z|x), each (K, N), and z, for z = mu + sigma * eps with eps (K, N, dim_z):
    one decoder pass over all K * N rows (with the labels y of the N images, for a conditional decoder).

    stop_q: q's parameters are held fixed inside log q(z|x), so that the encoder's gradient flows only
    through z (the values are the same to the bit).
    """
    k, n, dim_z = eps.shape
    z = mu + sigma * eps
    logits = decoder(z.reshape(k * n, dim_z), None if y is None else y.repeat(k)).reshape(k, n, -1)
    with torch.autocast(x.device.type, enabled=False):  # the sums over 784 pixels stay fp32
        # the Bernoulli likelihood x.l - softplus(l), its x.l term one batched product (cheaper than BCE here)
        log_px_z = torch.einsum("knd,nd->kn", logits, x) - softplus(logits).sum(-1)
    if stop_q:  # eps as a function of z alone: (z - mu) / sigma with mu and sigma fixed, the value eps exactly
        sigma = sigma.detach()
        eps = eps + (z - z.detach()) / sigma
    # log N(z; 0, I) - log N(z; mu, sigma^2): the 2 pi terms cancel
    log_prior_ratio = 0.5 * (eps.square() - z.square()).sum(-1) + sigma.log().sum(-1)
    return log_px_z, log_prior_ratio, z


def dreg_hook(log_w, kl_weight=1.0):
    """The gradient hook on z that makes the IWAE's path gradient the DReG estimator's.

    With q's parameters fixed in log w, the bound's gradient reaches z_k weighted by the normalised weight
    w_k; DReG weights it by w_k^2 (Tucker et al. 2018, eq. 6). Under a KL weight b < 1 (warm-up), where
    log w = log p(x|z) + b (log p(z) - log q(z|x)), the score term's share is b, and the weight becomes
    (1 - b) w_k + b w_k^2: the hook multiplies z's gradient by (1 - b) + b w_k.
    """
    scale = ((1.0 - kl_weight) + kl_weight * torch.softmax(log_w.detach(), 0)).unsqueeze(-1)
    return lambda grad: grad * scale


def iw_bound(log_w):
    """The importance-weighted bound log (1/K) sum_k exp(log_w[k]) per image, from (K, N) log weights."""
    return torch.logsumexp(log_w, 0) - math.log(len(log_w))


def chunked_sum(fn, x_hat, x, y, batch_size, on_chunk=None):
    """Sum of fn(x_hat[i:j], x[i:j], y[i:j]) over consecutive chunks of batch_size images (y may be None);
    on_chunk(size) after each."""
    total = 0
    for i in range(0, len(x), batch_size):
        total = total + fn(x_hat[i:i + batch_size], x[i:i + batch_size], None if y is None else y[i:i + batch_size])
        if on_chunk is not None:
            on_chunk(len(x[i:i + batch_size]))
    return total


@torch.no_grad()
def iw_log_likelihood(model, x_hat, x, k, max_rows=IW_ROWS, on_chunk=None, y=None):
    """Importance-weighted bound on log p(x) per image, log mean_k p(x, z_k) / q(z_k|x) (Burda et al. 2015); of
    log p(x|y) for a conditional model given the labels y.

    The K samples are drawn in chunks of at most max_rows decoder rows and folded into a running
    log-sum-exp, so memory stays bounded whatever K is; on_chunk() is called after each chunk (it may raise
    to stop a long evaluation).
    """
    model.eval()
    mu, sigma = model.encoder(x_hat, y)
    b, dim_z = mu.shape
    chunk = max(1, max_rows // b)
    log_sum = torch.full((b,), -math.inf, device=x.device)
    for start in range(0, k, chunk):
        n = min(chunk, k - start)
        log_px_z, log_prior_ratio, _ = log_weights(model.decoder, x, mu, sigma,
                                                   torch.randn(n, b, dim_z, device=x.device), y=y)
        log_sum = torch.logaddexp(log_sum, torch.logsumexp(log_px_z + log_prior_ratio, 0))
        if on_chunk is not None:
            on_chunk()
    return log_sum - math.log(k)


def mean_log_likelihood(model, x_hat, x, k, y=None, batch_size=IW_BATCH, on_batch=None, on_chunk=None):
    """Mean importance-weighted log p(x) (log p(x|y) with labels) bound over a data set, in batches; on_batch(n)
    after each batch of images, on_chunk() after each chunk of decoder rows."""
    total = chunked_sum(lambda a, b, c: iw_log_likelihood(model, a, b, k, on_chunk=on_chunk, y=c).double().sum(),
                        x_hat, x, y, batch_size, on_batch)
    return total.item() / len(x)


def iw_chunks(n_images, k, batch_size=IW_BATCH, max_rows=IW_ROWS):
    """How many decoder chunks mean_log_likelihood runs for n_images at K samples."""
    full, rest = divmod(n_images, batch_size)
    per_batch = lambda b: math.ceil(k / max(1, max_rows // b))  # noqa: E731
    return full * per_batch(batch_size) + (per_batch(rest) if rest else 0)


# ---- a trained model, back from its checkpoint

def from_checkpoint(ck, device):
    """The VAE a checked checkpoint describes, with its weights, in training mode on device; ValueError if the
    device has not the memory for it."""
    hardware.check_memory(ck.config.model_bytes(), "the checkpoint's model", device.type)
    with torch.device("meta"):
        built = VAE(ck.config)
    built.load_state_dict({name: w.clone() for name, w in ck.weights.items()}, assign=True)
    return built.to(device)


def load(path, device="cpu"):
    """A trained VAE from a checkpoint.pt of run_main.py, in evaluation mode on device; ValueError if the path
    or device is not one it can use, the file is not a sound checkpoint of this project, or its model does not
    fit in the device's free memory."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"expected the path of a checkpoint.pt, got {type(path).__name__}")
    device = inputs.as_device(device)
    return from_checkpoint(checkpoint.read(path), device).eval()
