"""Where a training step's time goes beyond its matrix products: the fp32 step timed whole and with parts taken
away, each against its floor (the same matrix products alone, as benchmarks/epoch_speed.py times them).

The rows take away, one after another, Adam's update, dropout (keep_prob 1.0), and then everything but the six
linear layers: their forward and backward through autograd, biases included, with no activation, sampling or
likelihood. That last row is the least a step of this model can cost in eager PyTorch, and the difference
between two rows is what the part taken away costs. Every row trains the same layers with the same Adam through
the project's training loop, and all are timed in one process in alternating rounds; each ratio is the median
of the rounds' ratios. Prints figures; it is not a test.

    python benchmarks/step_budget.py --data_dir data                      # the default model
    python benchmarks/step_budget.py --data_dir data --dim_z 50 --keep_prob 1.0 --iw_train 5 --iw_gradient dreg \\
        --binarize True                                                   # the literature's IWAE with DReG
"""
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
    """A model's six linear layers and nothing else; its objective is linear in the decoder's outputs, so
    that every layer gets its weight and input gradients (the decoder's over K rows per image)."""

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
        objective = (self.decoder(z).view(self.k, len(x), -1) * x).sum() / len(x)
        value = objective.detach()
        return objective, value, value, value


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
    rows = {"the step: forward, backward, Adam": (model, adam, args.keep_prob),
            "without Adam's update": (model, NoUpdate(adam), args.keep_prob),
            **({"without dropout (keep_prob 1.0)": (model, adam, 1.0)} if args.keep_prob < 1.0 else {}),
            "the six linear layers and Adam": (linear, adam, 1.0),
            "the six linear layers alone": (linear, NoUpdate(adam), 1.0)}
    floor = epoch_speed.floor_products(model.config, args.batch_size, k, device, torch.float32)

    def step(model, optimizer, keep_prob):
        for layer in model.modules():
            if isinstance(layer, vae.Dropout):
                layer.keep_prob = keep_prob  # 1.0 turns it off
        batches = itertools.islice(mnist_data.batches(train_x, args.batch_size, binarize=args.binarize), args.steps)
        training.train_epoch(model, optimizer, batches, k=k, gradient=args.iw_gradient)

    cases = {**{name: (lambda row=row: step(*row)) for name, row in rows.items()},
             "floor: the matrix products alone": lambda: epoch_speed.floor_epoch(floor, args.steps)}
    for run in cases.values():  # warm up
        run()
    ms = {name: [] for name in cases}
    for r in range(args.rounds):
        for name, run in (cases.items() if r % 2 else reversed(cases.items())):  # alternate the order
            ms[name].append(epoch_speed.timed(device, run) / args.steps * 1e3)
    floor_ms = ms["floor: the matrix products alone"]

    print(f"device: {device.type} ({epoch_speed.where(device)}); torch {torch.__version__}; "
          f"data: {'MNIST ' + args.data_dir if args.data_dir else 'random, MNIST shape'}")
    objective = "-ELBO" if k == 1 else f"IWAE K={k}, {args.iw_gradient}"
    print(f"model: dim_z {args.dim_z}, n_hidden {args.n_hidden}, keep_prob {args.keep_prob}, {objective}, batch "
          f"{args.batch_size}, fp32; {args.steps} steps a row in each of {args.rounds} rounds\n")
    print("| what runs | ms/step | / floor |")
    print("|---|---|---|")
    for name, times in ms.items():
        ratio = statistics.median(t / f for t, f in zip(times, floor_ms, strict=True))
        print(f"| {name} | {statistics.median(times):.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
