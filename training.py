"""Training and its evaluation: Adam, the learning-rate schedules, the KL warm-up, one epoch of training, the test
-ELBO and the denoising error; a resumed run's model, Adam and random streams restored from its checkpoint."""
import math
from typing import NamedTuple

import torch

import vae


class Metrics(NamedTuple):
    """Mean figures over images, in nats, all with the KL's weight 1 (never the warm-up's objective).

    loss is the -ELBO (= nll + divergence), or for the IWAE's K > 1 samples the bound -L_K, which is at
    most the -ELBO nll + divergence of the same samples.
    """
    loss: float
    nll: float  # -log p(x|z), a negative log-likelihood: the original's L_likelihood
    divergence: float  # KL(q(z|x) || p(z)), the original's L_divergence


def autocast(device, precision):
    """Training's numerics: bf16 runs the linear layers' products in bfloat16, all else stays fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def adam(model, learn_rate):
    """Adam with the fused kernel where the device has one (same update, one pass over the weights)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=learn_rate, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(model.parameters(), lr=learn_rate)


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
    """One pass of Adam over (x_hat, x, y) batches (y None for a plain model) on the -ELBO (k = 1) or the IWAE
    bound (k > 1): the mean Metrics with the KL's weight 1, or None if should_stop() said so.

    kl_weight: the KL's weight in the objective at each step (None: 1); on_step(loss) is called after each
    step with the batch's loss tensor; gradient: the IWAE's estimator for k > 1, "iwae" or "dreg".
    """
    model.train()
    device = model.device
    sums, n = torch.zeros(3, device=device), 0
    for x_hat, x, y in batches:
        if should_stop is not None and should_stop():
            return None
        with autocast(device, precision):
            objective, loss, nll, kl = model.loss(x_hat, x, k=k, kl_weight=1.0 if kl_weight is None else kl_weight[n],
                                                  gradient=gradient, y=y)
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        sums += torch.stack((loss, nll, kl)).detach()
        n += 1
        if on_step is not None:
            on_step(loss.detach())
    return Metrics(*(sums / n).tolist())


@torch.no_grad()
def evaluate(model, x_hat, x, y=None, batch_size=1000):
    """Mean Metrics over all images in evaluation mode (no dropout) and fp32, in batches; y: the labels, for a
    conditional model."""
    model.eval()
    sums = vae.chunked_sum(lambda a, b, c: torch.stack(model.loss(a, b, y=c)[1:]) * len(b), x_hat, x, y, batch_size)
    return Metrics(*(sums / len(x)).tolist())


@torch.no_grad()
def mean_abs_error(model, x_hat, x, y=None, batch_size=1000):
    """Mean absolute pixel error against x of the inputs x_hat and of their reconstructions: (input, restored)."""
    model.eval()
    restored = vae.chunked_sum(lambda a, b, c: (torch.sigmoid(model(a, c)[0]) - b).abs().sum(), x_hat, x, y,
                               batch_size)
    return (x_hat - x).abs().mean().item(), restored.item() / x.numel()


def restore(ck, device, learn_rate):
    """The model, Adam (with its moments) and the random streams where the checkpoint ck left them."""
    model = vae.from_checkpoint(ck, device)
    optimizer = adam(model, learn_rate)
    state = {i: {name: t.clone() for name, t in entry.items()} for i, entry in enumerate(ck.adam)}
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    torch.set_rng_state(ck.rng["cpu"])
    if device.type == "cuda" and "cuda" in ck.rng:
        torch.cuda.set_rng_state(ck.rng["cuda"], device)
    return model, optimizer
