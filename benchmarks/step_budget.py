"""Where a training step's time goes beyond its matrix products: the fp32 step timed whole and with parts taken
away, each against its floor (the same matrix products alone, as benchmarks/epoch_speed.py times them).

The rows: the step; the step without Adam's update; the step without dropout (keep_prob 1.0); and the six
linear layers with and without Adam. The last keeps of the step only the batch's slicing (and binarizing),
the linear layers' forward and backward through autograd (biases included) and one product of the decoder's
outputs with the images: no activation, dropout, sampling, likelihood or KL. So Adam costs "the step" less
"without Adam's update"; dropout, "the step" less "without dropout"; the activations, sampling, likelihood and
KL, "without dropout" (or "the step", at keep_prob 1.0) less "the six linear layers and Adam". Every row runs
the same layers with the same Adam through the project's training loop (the linear rows with zero gradients,
so that they pull the weights toward nothing else), and all are timed in one process in alternating rounds;
the ratios are medians of the rounds' ratios. Prints figures; it is not a test.

    python benchmarks/step_budget.py --data_dir data                      # the default model
    python benchmarks/step_budget.py --data_dir data --dim_z 50 --keep_prob 1.0 --iw_train 5 --iw_gradient dreg \\
        --binarize True                                                   # the literature's IWAE with DReG
"""
import dataclasses
import itertools
import statistics

import epoch_speed  # puts the project on the path
import torch
from torch import nn

import mnist_data
import training
import vae
from config import VAEConfig


class LinearLayersOnly(nn.Module):
    """A model's six linear layers (its own, shared) and nothing else, with an objective of zero gradient that
    still runs every layer's weight and input gradients (the decoder's over K rows per image)."""

    def __init__(self, model, k):
        super().__init__()
        linear = lambda net: nn.Sequential(*(m for m in net if isinstance(m, nn.Linear)))  # noqa: E731
        self.encoder, self.decoder = linear(model.encoder.net), linear(model.decoder.net)
        self.dim_z, self.k = model.dim_z, k

    @property
    def device(self):
        return next(self.parameters()).device

    def loss(self, x_hat, x, **_):
        z = self.encoder(x_hat)[:, :self.dim_z].repeat(self.k, 1)
        objective = (self.decoder(z).view(self.k, len(x), -1) * x).sum() * 0.0
        value = objective.detach()
        return objective, value, value, value


def without_dropout(model):
    """The model with keep_prob 1.0 whose linear layers are the given model's own (the same weights)."""
    twin = vae.VAE(dataclasses.replace(model.config, keep_prob=1.0)).to(model.device)
    for own, theirs in ((twin.encoder.net, model.encoder.net), (twin.decoder.net, model.decoder.net)):
        for i, layer in enumerate(theirs):
            if isinstance(layer, nn.Linear):
                own[i] = layer
    return twin


class NoUpdate:
    """An optimizer that clears the gradients and leaves the weights as they are: the step without Adam."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self):
        pass


def main(argv=None):
    p = epoch_speed.model_arguments(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=12, help="rounds, each timing every row once (at least 1)")
    p.add_argument("--steps", type=int, default=50, help="training steps a row runs in each round (at least 1)")
    args = p.parse_args(argv)
    if min(args.rounds, args.steps, args.iw_train) < 1:
        p.error("--rounds, --steps and --iw_train must be at least 1")
    device, k = torch.device(args.device), args.iw_train
    train_x, _ = epoch_speed.mnist_images(args.data_dir, device, args.binarize)

    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(args.dim_z, args.n_hidden, args.keep_prob)).to(device)
    adam, linear = training.adam(model, 1e-3), LinearLayersOnly(model, k)
    # every row trains the same layers with the same Adam, so that each finds the caches as an epoch would
    rows = {"the step: forward, backward, Adam": (model, adam),
            "without Adam's update": (model, NoUpdate(adam)),
            **({"without dropout (keep_prob 1.0)": (without_dropout(model), adam)} if args.keep_prob < 1.0 else {}),
            "the six linear layers and Adam": (linear, adam),
            "the six linear layers alone": (linear, NoUpdate(adam))}
    floor = epoch_speed.floor_products(model.config, args.batch_size, k, device, torch.float32)

    def step(net, optimizer):
        batches = itertools.islice(mnist_data.batches(train_x, args.batch_size, binarize=args.binarize), args.steps)
        training.train_epoch(net, optimizer, batches, k=k, gradient=args.iw_gradient)

    cases = {**{name: (lambda row=row: step(*row)) for name, row in rows.items()},
             "floor: the matrix products alone": lambda: epoch_speed.floor_epoch(floor, args.steps)}
    for run in cases.values():  # warm up
        run()
    ms = {name: [] for name in cases}
    for r in range(args.rounds):
        for name, run in (cases.items() if r % 2 else reversed(cases.items())):  # alternate the order
            ms[name].append(epoch_speed.timed(device, run) / args.steps * 1e3)
    floor_ms = ms["floor: the matrix products alone"]

    print(epoch_speed.describe(args, device) + f", fp32; {args.steps} steps a row in each of {args.rounds} rounds\n")
    print("| what runs | ms/step | / floor |")
    print("|---|---|---|")
    for name, times in ms.items():
        ratio = statistics.median(t / f for t, f in zip(times, floor_ms, strict=True))
        print(f"| {name} | {statistics.median(times):.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
