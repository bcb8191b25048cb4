"""The VAE of Kingma & Welling: Gaussian MLP encoder, Bernoulli MLP decoder, -ELBO, likelihood bounds."""
import math
import operator
import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mnist_data import IMAGE_SIZE, NUM_LABELS

DIM_IMG = IMAGE_SIZE * IMAGE_SIZE
KEEP_PROB = 0.9  # the original's dropout keep probability while training
KEEP_PROB_MIN = 1e-3  # below this, dropout's 1 / keep_prob scaling overflows the training (1e-40 did)
MAX_WIDTH = 2**31 - 1  # the most units dim_z or n_hidden may name (torch's 32-bit sizes)


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


def mlp(n_in, n_hidden, n_out, first_act, second_act, keep_prob, n_first=None):
    """Two dropout-regularised hidden layers (the first n_first units wide, n_hidden by default) and a linear
    output, as both of the original's MLPs."""
    n_first = n_hidden if n_first is None else n_first
    return nn.Sequential(
        variance_scaling_(nn.Linear(n_in, n_first)), first_act, Dropout(keep_prob),
        variance_scaling_(nn.Linear(n_first, n_hidden)), second_act, Dropout(keep_prob),
        variance_scaling_(nn.Linear(n_hidden, n_out)),
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
    sigma.

    Conditional, as the author's CVAE: the one-hot label joins the image at the input, and the first hidden
    layer is widened by the label's 10 units.
    """

    def __init__(self, dim_z, n_hidden, keep_prob=KEEP_PROB, dim_img=DIM_IMG, conditional=False):
        super().__init__()
        self.dim_z, self.conditional = dim_z, conditional
        extra = NUM_LABELS if conditional else 0
        self.net = mlp(dim_img + extra, n_hidden, 2 * dim_z, nn.ELU(inplace=True), nn.Tanh(), keep_prob,
                       n_hidden + extra)

    def forward(self, x, y=None):
        params = at_least_fp32(self.net(with_label(x, y, self.conditional)))  # fp32, also after bf16 products
        mu, s = params[:, :self.dim_z], params[:, self.dim_z:]
        return mu, 1e-6 + F.softplus(s)


class Decoder(nn.Module):
    """Bernoulli MLP decoder p(x|z), or p(x|z, y) when conditional (the one-hot label joins z at the input):
    tanh then ELU hidden layers; returns the pixels' logits."""

    def __init__(self, dim_z, n_hidden, keep_prob=KEEP_PROB, dim_img=DIM_IMG, conditional=False):
        super().__init__()
        self.conditional = conditional
        self.net = mlp(dim_z + (NUM_LABELS if conditional else 0), n_hidden, dim_img, nn.Tanh(),
                       nn.ELU(inplace=True), keep_prob)

    def forward(self, z, y=None):
        return at_least_fp32(self.net(with_label(z, y, self.conditional)))  # fp32 logits, also after bf16


def check_model_args(dim_z, n_hidden, keep_prob, dim_img=DIM_IMG, conditional=False):
    """ValueError unless dim_z, n_hidden and dim_img are whole numbers from 1 to MAX_WIDTH, keep_prob is from
    KEEP_PROB_MIN to 1 and conditional is a bool."""
    for name, value in (("dim_z", dim_z), ("n_hidden", n_hidden), ("dim_img", dim_img)):
        if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WIDTH):
            raise ValueError(f"expected {name} a whole number from 1 to {MAX_WIDTH}, got {value!r}")
    if not (isinstance(keep_prob, (int, float)) and not isinstance(keep_prob, bool)
            and KEEP_PROB_MIN <= keep_prob <= 1):
        raise ValueError(f"expected keep_prob from {KEEP_PROB_MIN} to 1, got {keep_prob!r}")
    if not isinstance(conditional, bool):
        raise ValueError(f"expected conditional True or False, got {conditional!r}")


def neg_log_likelihood(logits, x):
    """-log p(x|z) per image: the Bernoulli likelihood from logits, summed over pixels."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def kl_divergence(mu, sigma):
    """KL(q(z|x) || N(0, I)) per image, as the original: 0.5 * sum(mu^2 + sigma^2 - log(1e-8 + sigma^2) - 1)."""
    s2 = sigma.square()
    return 0.5 * (mu.square() + s2 - torch.log(1e-8 + s2) - 1.0).sum(-1)


class VAE(nn.Module):
    """Encoder, reparameterised sample z = mu + sigma * eps, decoder; conditional: both also see the digit's
    label y (the CVAE, "M2" of Kingma et al. 2014 with every label known), and the bounds are of log p(x|y).

    Inside (forward, loss and the functions that train and evaluate), y is the (N,) int64 labels and is used
    only by a conditional model; the methods for users check their labels= against the model's kind.
    """

    def __init__(self, dim_z, n_hidden, keep_prob=KEEP_PROB, dim_img=DIM_IMG, conditional=False):
        super().__init__()
        check_model_args(dim_z, n_hidden, keep_prob, dim_img, conditional)
        self.dim_z, self.n_hidden, self.keep_prob, self.conditional = dim_z, n_hidden, keep_prob, conditional
        self.encoder = Encoder(dim_z, n_hidden, keep_prob, dim_img, conditional)
        self.decoder = Decoder(dim_z, n_hidden, keep_prob, dim_img, conditional)

    def model_args(self):
        """The arguments that rebuild this model: VAE(**model.model_args())."""
        return {"dim_z": self.dim_z, "n_hidden": self.n_hidden, "keep_prob": self.keep_prob,
                "conditional": self.conditional}

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

    @torch.no_grad()
    def encode(self, x, labels=None):
        """The posterior q(z|x) (q(z|x, y) with labels) of each image: (mu, sigma). x: (N, 784), (N, 28, 28) or
        (N, 1, 28, 28)."""
        x = as_rows(x)
        return self.encoder(x, self.labels_for(labels, len(x)))

    @torch.no_grad()
    def decode(self, z, labels=None):
        """Pixel probabilities for given latent vectors z, (N, dim_z) (and their labels, for a conditional model)."""
        z = self.as_latents(z)
        return torch.sigmoid(self.decoder(z, self.labels_for(labels, len(z))))

    @torch.no_grad()
    def reconstruct(self, x_hat, labels=None):
        """Pixel probabilities of the decoded sample of each input, as the original's PRR images."""
        x_hat = as_rows(x_hat)
        return torch.sigmoid(self(x_hat, self.labels_for(labels, len(x_hat)))[0])

    @torch.no_grad()
    def sample(self, n, generator=None, labels=None):
        """n images from the generative model: pixel probabilities for z ~ N(0, I) (and the given labels, for a
        conditional model: one digit for all, or one per image)."""
        device = next(self.parameters()).device
        n = whole_number(n, "a whole number of images of at least 0", 0)
        self.check_room(n)
        if generator is not None and not (isinstance(generator, torch.Generator)
                                          and generator.device.type == device.type):
            raise ValueError(f"expected a torch.Generator on the model's device ({device.type}), got {generator!r}")
        y = self.labels_for(labels, n)
        return torch.sigmoid(self.decoder(torch.randn(n, self.dim_z, generator=generator, device=device), y))

    @torch.no_grad()
    def interpolate(self, x_a, x_b, steps, labels=None):
        """Decodes at steps evenly spaced points on the line from each x_a's encoder mean to its x_b's, both
        ends included: pixel probabilities, (N, steps, 784).

        A conditional model takes labels=(labels_a, labels_b), the digits of x_a and x_b: each image is
        encoded with its own, and each point is decoded with its nearer end's (the label changes halfway).
        """
        x_a, x_b = as_rows(x_a), as_rows(x_b)
        if len(x_a) != len(x_b):
            raise ValueError(f"expected as many images in x_a as in x_b, got {len(x_a)} and {len(x_b)}")
        steps = whole_number(steps, "steps, a whole number of at least 2", 2)
        self.check_room(max(len(x_a), 1) * steps)
        if self.conditional and not (isinstance(labels, (tuple, list)) and len(labels) == 2):
            raise ValueError("this model is conditional (--conditional True): give labels=(labels_a, labels_b), "
                             "the digits of x_a and x_b")
        y_a, y_b = (self.labels_for(part, len(x_a)) for part in (labels if self.conditional else (labels, None)))
        mu_a, mu_b = self.encoder(x_a, y_a)[0], self.encoder(x_b, y_b)[0]
        t = torch.linspace(0.0, 1.0, steps, device=mu_a.device)
        z = mu_a[:, None] + t[None, :, None] * (mu_b - mu_a)[:, None]  # (N, steps, dim_z)
        y = torch.where(t < 0.5, y_a[:, None], y_b[:, None]).reshape(-1) if self.conditional else None
        return torch.sigmoid(self.decoder(z.reshape(-1, self.dim_z), y)).reshape(len(x_a), steps, DIM_IMG)

    def labels_for(self, labels, n):
        """The labels of n inputs as (n,) int64 on the model's device, or None for a plain model; ValueError when
        a conditional model has none, a plain one is given some, or they are not n digits."""
        if self.conditional and labels is None:
            raise ValueError("this model is conditional (--conditional True): give labels=, digits 0 to 9")
        if not self.conditional:
            if labels is not None:
                raise ValueError("this model is not conditional: labels= is only for a model trained with "
                                 "--conditional True")
            return None
        return as_labels(labels, n, next(self.parameters()).device)

    def check_room(self, n):
        """ValueError when n images (and their latent vectors) would not fit in the device's free memory."""
        import hardware
        device = next(self.parameters()).device
        free, need = hardware.available_memory(device.type), 4 * n * (DIM_IMG + self.dim_z + NUM_LABELS)
        if free is not None and need > free:
            raise ValueError(f"{n} images need about {hardware.gigabytes(need)} of memory; "
                             f"{hardware.gigabytes(free)} is available")

    def as_latents(self, z):
        """Latent vectors as float32 (N, dim_z) rows; ValueError for anything else or a non-finite value."""
        if not is_dense(z) or not z.is_floating_point():
            raise ValueError(f"expected a floating-point tensor of latent vectors, got {type(z).__name__}"
                             + (f" of {z.dtype}" if isinstance(z, torch.Tensor) else ""))
        if z.dim() != 2 or z.shape[1] != self.dim_z:
            raise ValueError(f"expected latent vectors of shape (N, {self.dim_z}), got {tuple(z.shape)}")
        if not bool(torch.isfinite(z).all()):
            raise ValueError("expected finite latent vectors, got NaN or infinity")
        return z.float()


MAX_PIXEL = 2.0  # the original's salt-and-pepper inputs x * m1 + m2 reach 2


def whole_number(n, what, low):
    """n as an int of at least low (a bool is not one); ValueError saying what was expected otherwise."""
    try:
        n = operator.index(n) if not isinstance(n, bool) else None
    except TypeError:
        n = None
    if n is None or n < low:
        raise ValueError(f"expected {what}")
    return n


def as_labels(labels, n, device):
    """Labels of n inputs as (n,) int64 digits on device, from one digit for all, n digits (a sequence or an
    integer tensor) or n one-hot rows (N, 10); ValueError for anything else."""
    want = f"labels: a digit 0 to 9, {n} of them, or {n} one-hot rows of {NUM_LABELS}"
    if isinstance(labels, bool):
        raise ValueError(f"expected {want}, got {labels!r}")
    if not isinstance(labels, torch.Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise ValueError(f"expected {want}, got {type(labels).__name__}") from None
    if not is_dense(labels) or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"expected {want}, got a tensor of {labels.dtype}")
    # float64 or int64, whose operations every device has (uint64 beyond 2**63 wraps negative: refused below)
    labels = labels.double() if labels.is_floating_point() else labels.long()
    if labels.dim() == 2 and tuple(labels.shape) == (n, NUM_LABELS):  # one-hot: a single 1 in each row
        if not bool(((labels == 0) | (labels == 1)).all() and (labels.sum(1) == 1).all()):
            raise ValueError(f"expected {want}; these rows are not one-hot")
        labels = labels.argmax(1)
    if labels.dim() > 1 or (labels.dim() == 1 and len(labels) != n):
        raise ValueError(f"expected {want}, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise ValueError(f"expected {want}; got values that are not whole")
    if labels.numel() and not bool(((labels >= 0) & (labels < NUM_LABELS)).all()):
        raise ValueError(f"expected {want}; got values from {labels.min().item():g} to {labels.max().item():g}")
    return labels.expand(n).to(device=device, dtype=torch.int64).clone(memory_format=torch.contiguous_format)


def is_dense(t):
    """Whether t is an ordinary tensor with values (not sparse, nested, quantized or on the meta device)."""
    return (isinstance(t, torch.Tensor) and t.layout == torch.strided and not t.is_nested and not t.is_quantized
            and t.device.type != "meta")


def as_rows(x):
    """Images as float32 (N, 784) rows: accepts (N, 784), (N, 28, 28) and (N, 1, 28, 28) with pixel values in
    [0, 1] (noisy inputs up to 2); ValueError otherwise."""
    if not is_dense(x) or not x.is_floating_point():
        raise ValueError(f"expected a dense floating-point tensor of images in [0, 1], got {type(x).__name__}"
                         + (f" of {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    shapes = ((DIM_IMG,), (IMAGE_SIZE, IMAGE_SIZE), (1, IMAGE_SIZE, IMAGE_SIZE))
    if x.dim() < 2 or tuple(x.shape[1:]) not in shapes:
        raise ValueError(f"expected images of shape (N, 784), (N, 28, 28) or (N, 1, 28, 28), got {tuple(x.shape)}")
    if len(x) and not (bool(torch.isfinite(x).all()) and 0 <= x.min().item() and x.max().item() <= MAX_PIXEL):
        raise ValueError(f"expected pixel values in [0, 1], got values from {x.min().item():g} to {x.max().item():g}")
    return x.reshape(len(x), DIM_IMG).float()  # float64 or float16 images become the model's float32


class Metrics(NamedTuple):
    """Mean figures over images, in nats, all with the KL's weight 1 (never the warm-up's objective).

    loss is the -ELBO (= nll + divergence), or for the IWAE's K > 1 samples the bound -L_K, which is at
    most the -ELBO nll + divergence of the same samples.
    """
    loss: float
    nll: float  # -log p(x|z), a negative log-likelihood: the original's L_likelihood
    divergence: float  # KL(q(z|x) || p(z)), the original's L_divergence


PRECISIONS = ("fp32", "bf16")


def autocast(device, precision):
    """Training's numerics: bf16 runs the linear layers' products in bfloat16, all else stays fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def adam(model, learn_rate):
    """Adam with the fused kernel where the device has one (same update, one pass over the weights)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=learn_rate, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(model.parameters(), lr=learn_rate)


LR_SCHEDULES = ("constant", "cosine")
IW_GRADIENTS = ("iwae", "dreg")


def learning_rate(epoch, num_epochs, learn_rate, lr_min, schedule):
    """Adam's rate in an epoch: constant, or cosine from learn_rate at epoch 0 to lr_min at the last epoch."""
    if schedule == "constant" or num_epochs <= 1:
        return learn_rate
    angle = math.pi * min(epoch, num_epochs - 1) / (num_epochs - 1)
    return lr_min + 0.5 * (learn_rate - lr_min) * (1.0 + math.cos(angle))


def kl_weights(epoch, steps, warmup_epochs):
    """The KL term's weight at each of an epoch's steps: rising linearly from 0 (step 0 of epoch 0) to 1
    over the first warmup_epochs epochs (Sonderby et al. 2016), then 1."""
    if warmup_epochs <= 0:
        return [1.0] * steps
    return [min(1.0, (epoch + i / steps) / warmup_epochs) for i in range(steps)]


def train_epoch(model, optimizer, batches, precision="fp32", k=1, kl_weight=None, should_stop=None, on_step=None,
                gradient="iwae"):
    """One pass of Adam over (x_hat, x) batches, or (x_hat, x, y) with labels, on the -ELBO (k = 1) or the
    IWAE bound (k > 1): the mean Metrics with the KL's weight 1, or None if should_stop() said so.

    kl_weight: the KL's weight in the objective at each step (None: 1); on_step(loss) is called after each
    step with the batch's loss tensor; gradient: the IWAE's estimator for k > 1, "iwae" or "dreg".
    """
    model.train()
    device = next(model.parameters()).device
    sums, n = torch.zeros(3, device=device), 0
    for x_hat, x, *y in batches:
        if should_stop is not None and should_stop():
            return None
        with autocast(device, precision):
            objective, loss, nll, kl = model.loss(x_hat, x, k, 1.0 if kl_weight is None else kl_weight[n], gradient,
                                                  *y)
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        sums += torch.stack((loss, nll, kl)).detach()
        n += 1
        if on_step is not None:
            on_step(loss.detach())
    return Metrics(*(sums / n).tolist())


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
def evaluate(model, x_hat, x, y=None, batch_size=1000):
    """Mean Metrics over all images in evaluation mode (no dropout) and fp32, in batches; y: the labels, for a
    conditional model."""
    model.eval()
    sums = chunked_sum(lambda a, b, c: torch.stack(model.loss(a, b, y=c)[1:]) * len(b), x_hat, x, y, batch_size)
    return Metrics(*(sums / len(x)).tolist())


@torch.no_grad()
def mean_abs_error(model, x_hat, x, y=None, batch_size=1000):
    """Mean absolute pixel error against x of the inputs x_hat and of their reconstructions: (input, restored)."""
    model.eval()
    restored = chunked_sum(lambda a, b, c: (torch.sigmoid(model(a, c)[0]) - b).abs().sum(), x_hat, x, y, batch_size)
    return (x_hat - x).abs().mean().item(), restored.item() / x.numel()


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
        log_px_z = torch.einsum("knd,nd->kn", logits, x) - F.softplus(logits).sum(-1)
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


IW_BATCH = 100  # images per batch of the importance-weighted bound
IW_ROWS = 16384  # decoder rows per chunk of its samples


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


def parameter_count(dim_z, n_hidden, dim_img=DIM_IMG, conditional=False):
    """Weights and biases of VAE(dim_z, n_hidden): the encoder's three layers and the decoder's three."""
    y = NUM_LABELS if conditional else 0
    first = n_hidden + y  # the conditional encoder's first layer is widened by the label's units
    encoder = (dim_img + y + 1) * first + (first + 1) * n_hidden + (n_hidden + 1) * 2 * dim_z
    decoder = (dim_z + y + 1) * n_hidden + (n_hidden + 1) * n_hidden + (n_hidden + 1) * dim_img
    return encoder + decoder


def load(path, device="cpu"):
    """A trained VAE from a checkpoint.pt of run_main.py, in evaluation mode on device; ValueError if the file
    is not a sound checkpoint of this project or its model does not fit in the device's free memory."""
    import checkpoint  # the checkpoint's reader builds on this module
    import hardware
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"expected the path of a checkpoint.pt, got {type(path).__name__}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"expected a device such as 'cpu' or 'cuda', got {device!r}") from None
    if device.type in ("cuda", "mps") and hardware.missing_device(device.type):
        raise ValueError(f"device {device}: {hardware.missing_device(device.type)}")
    return checkpoint.model(checkpoint.read(path), device).eval()
