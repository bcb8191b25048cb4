"""Train the MNIST VAE of Kingma & Welling: parse, load, train and plot, evaluate.

Glossary
  x       an image, 784 pixel values in [0, 1]; x_hat  what the encoder sees: x, or x with the original's
          salt-and-pepper noise (--add_noise), which the model learns to remove
  PRR     "plot reproduced results": a grid of test images' reconstructions
  PMLR    "plot manifold learning results": the decoder over a grid of 2-D z, and where the test images lie
  PRS     "plot random samples": decodes of z drawn from the prior N(0, I)
  -ELBO   training's loss: L_likelihood, the nll -log p(x|z), plus L_divergence, KL(q(z|x) || p(z))
  likelihood  always a log-likelihood, log p (a negative number of nats); its negation is called nll:
          metrics.csv's *_loss = *_nll + *_divergence, evaluation.json's test_log_likelihood = log p(x).
          Only the printed L_likelihood keeps the original's label for the nll.

torch is imported after the command line is parsed (cli.py imports none), so --help and usage errors are instant.
"""
import signals  # first, and its handlers at once: a Ctrl-C while the modules below import is one line too

if __name__ == "__main__":
    signals.SIGNALS.stop_at_once()

import csv
import dataclasses
import io
import json
import math
import sys
import time
from typing import NamedTuple

import cli
import mnist_data
import results_folder
from flags import DEFAULTS
from pictures import Pictures
from report import NonFinite, RunError, duration, fail, out_of_memory, quiet_stdout, say
from signals import SIGNALS, Interrupted

LONG_EVALUATION_S = 10  # an importance-weighted evaluation longer than this announces its time


def main(argv=None, script="run_main.py"):
    """Parse, load, build or resume, train and plot, evaluate; a failure is one line and an exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    with SIGNALS.caught():  # until the results folder is touched a signal stops the run at once
        plan = run = folder = None
        try:
            plan = cli.parse_args(argv)
            settings = plan.settings
            data = load_data(plan)  # every check that can fail runs before the folder is touched
            run = build_run(plan, data)
            pictures = build_pictures(plan, data)  # their fixed inputs, built before the folder is touched too
            SIGNALS.writing()  # from here a signal stops the run at its next safe point, never mid-write
            with results_folder.results_folder(settings.results_path, settings.resume) as folder:
                check_still_the_checkpoint_read(plan, folder)
                announce_resume(plan, run)
                pictures.folder = folder
                pictures.save_inputs()
                train(settings, run, data, pictures)
                if run.start == settings.num_epochs:  # nothing was left to train: draw the resumed model
                    listen = lambda: SIGNALS.check(phase="while drawing the pictures")  # noqa: E731
                    pictures.save(run.model, run.epoch - 1, between=listen)
                final_evaluation(settings, run, data, folder)
                SIGNALS.check()
        except Interrupted as e:
            saved = saved_checkpoint(plan, run, folder)
            command = signals.resume_command(script, argv, saved, signals.python_command()) if saved else None
            message = signals.interrupted_message(e, run.epoch if run else 0, saved, command)
            fail(message, signals.EXIT_SIGNALS[e.signum])
        except NonFinite as e:
            saved = saved_checkpoint(plan, run, folder)
            kept = f"the last good checkpoint is {saved}" if saved else "no epoch finished"
            fail(f"non-finite {e.what} in {e.phase} (try a smaller --learn_rate); {kept}", 1)
        except RunError as e:  # a failed write, a busy folder, a bad batch size or checkpoint
            saved = saved_checkpoint(plan, run, folder) if isinstance(e, results_folder.WriteError) else None
            command = signals.resume_command(script, argv, saved, signals.python_command()) if saved else None
            fail(f"{e}; {saved} holds {run.epoch} epochs; continue with: {command}" if saved else str(e), e.status)
        except (MemoryError, RuntimeError) as e:
            if not out_of_memory(e):
                raise
            saved = saved_checkpoint(plan, run, folder)
            command = signals.resume_command(script, argv, saved, signals.python_command()) if saved else None
            fail("out of memory while training (try a smaller --n_hidden, --batch_size or --iw_train)"
                 + (f"; {saved} holds {run.epoch} epochs; continue with: {command}" if saved else ""), 1)


def saved_checkpoint(plan, run, folder):
    """The newest checkpoint a user could resume from: this run's, else the one it resumed (or None)."""
    if run is not None and folder is not None and run.epoch > run.start:
        return folder.file(results_folder.CHECKPOINT)
    return plan.settings.resume if plan is not None else None


def check_still_the_checkpoint_read(plan, folder):
    """A run that continues its folder's own checkpoint, now that it holds the folder's lock, refuses to go on
    if another run has written that checkpoint since it was read (it would write over that run's epochs)."""
    import checkpoint
    if folder.continues and not checkpoint.unchanged(plan.checkpoint):
        raise RunError(f"--resume: {plan.settings.resume} was written by another run after this one read it; "
                       f"run the command again to continue from its new epochs")


# ---- load, build or resume

class TestSet(NamedTuple):
    """The test images: clean (x), as the model sees them (x_hat: noisy with --add_noise), and their labels."""
    x: object
    x_hat: object
    y: object


class Data(NamedTuple):
    """What a run trains and evaluates on, on the training device (the labels are used by a conditional model
    only)."""
    train_x: object
    train_y: object
    test: TestSet


def load_data(plan):
    """MNIST on the device, the test inputs made noisy once (from a generator of --seed) with --add_noise;
    checks the batch size and that the pictures have their test images."""
    import torch
    s, device = plan.settings, plan.device
    try:
        mnist = mnist_data.load_mnist(s.data_dir, device, s.binarize)
    except mnist_data.MNISTError as e:  # missing or damaged data
        raise RunError(str(e)) from None
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        raise RunError(f"out of memory loading MNIST from {s.data_dir} onto {device}") from None
    if mnist_data.num_batches(len(mnist.train_x), s.batch_size) == 0:
        raise RunError(f"--batch_size {s.batch_size} is larger than the {len(mnist.train_x)} training images", 2)
    needed = cli.test_images_needed(s, plan.grids)
    if needed > len(mnist.test_x):
        raise RunError(f"the plots need {needed} test images; {s.data_dir} has {len(mnist.test_x)}", 2)
    x_hat = mnist.test_x
    if s.add_noise:
        x_hat = mnist_data.salt_and_pepper(mnist.test_x, torch.Generator(device=device).manual_seed(s.seed))
    return Data(mnist.train_x, mnist.train_y, TestSet(mnist.test_x, x_hat, mnist.test_y))


@dataclasses.dataclass
class Run:
    """The state training carries from epoch to epoch."""
    model: object
    optimizer: object
    epoch: int = 0  # the next epoch to train
    best_loss: float = math.inf
    history: list = dataclasses.field(default_factory=list)
    start: int = 0  # the epoch this process started from


def build_run(plan, data):
    """The model and Adam, new (seeded by --seed) or restored from the checkpoint with its random states."""
    import torch

    import training
    import vae
    s, ck = plan.settings, plan.checkpoint
    torch.manual_seed(s.seed)
    if ck is None:
        model = vae.VAE(plan.config).to(plan.device)
        if s.output_bias == "mean":
            model.init_output_bias(data.train_x.mean(0))
        return Run(model, training.adam(model, s.learn_rate))
    model, optimizer = training.restore(ck, plan.device, s.learn_rate)
    return Run(model, optimizer, ck.epoch, ck.best_loss, [dict(row) for row in ck.history], ck.epoch)


def build_pictures(plan, data):
    """The pictures' fixed inputs; running out of memory for them is one line that says so."""
    try:
        return Pictures(plan, data)
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        raise RunError("out of memory building the pictures' inputs (try smaller grids)") from None


def announce_resume(plan, run):
    """What a resumed run continues from and changes, said once it holds the results folder."""
    import training
    s, ck = plan.settings, plan.checkpoint
    if ck is None:
        return
    say(f"resumed from {s.resume} after {ck.epoch} epochs")
    for line in plan.changed:
        say(line)
    planned = ck.args.get("num_epochs", s.num_epochs)
    if s.lr_schedule == "cosine" and planned != s.num_epochs and ck.epoch < s.num_epochs:
        before = {name: ck.args.get(name, DEFAULTS[name]) for name in ("learn_rate", "lr_min", "lr_schedule")}
        was = training.learning_rate(ck.epoch, planned, before["learn_rate"], before["lr_min"], before["lr_schedule"])
        say(f"the cosine schedule now runs over {s.num_epochs} epochs (the checkpoint's run planned {planned}): "
            f"epoch {ck.epoch} trains at {learning_rate(s, ck.epoch):.3g} where it would have at {was:.3g}")


# ---- train

def learning_rate(s, epoch):
    """Adam's rate in an epoch under the run's schedule."""
    import training
    return training.learning_rate(epoch, s.num_epochs, s.learn_rate, s.lr_min, s.lr_schedule)


def train(s, run, data, pictures):
    """Train from run.epoch to --num_epochs, evaluating on the test set and saving after each epoch."""
    from tqdm import tqdm

    import training
    show_bar = sys.stderr.isatty()
    steps = mnist_data.num_batches(len(data.train_x), s.batch_size)
    for epoch in range(run.epoch, s.num_epochs):
        t0 = time.perf_counter()
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate(s, epoch)
        with tqdm(total=steps, desc=f"epoch {epoch}", leave=False, disable=not show_bar) as bar:
            def show_step(loss):
                bar.set_postfix(loss=f"{loss.item():.2f}", refresh=False)
                bar.update()
            batches = mnist_data.batches(data.train_x, s.batch_size, s.add_noise, s.binarize, data.train_y)
            kl_weights = training.kl_weights(epoch, steps, s.kl_warmup)
            train_metrics = training.train_epoch(
                run.model, run.optimizer, batches, s.precision, s.iw_train, kl_weights, should_stop=SIGNALS.stopping,
                on_step=show_step if show_bar else None, gradient=s.iw_gradient)
        if train_metrics is None:
            raise Interrupted(SIGNALS.received, epoch)
        if not (all(map(math.isfinite, train_metrics)) and all(p.isfinite().all() for p in run.model.parameters())):
            raise NonFinite("loss", f"epoch {epoch}")
        test_metrics = training.evaluate(run.model, data.test.x_hat, data.test.x, data.test.y)
        if not all(map(math.isfinite, test_metrics)):
            raise NonFinite("test loss", f"epoch {epoch}")
        seconds = time.perf_counter() - t0
        save_epoch(s, run, pictures, (train_metrics, test_metrics), seconds)
        # K > 1: the training bound -L_K first, then the -ELBO's two terms of the same samples
        label = "L_tot" if s.iw_train == 1 else f"-L_{s.iw_train}"
        say(f"epoch {epoch}: {label} %03.2f L_likelihood %03.2f L_divergence %03.2f" % tuple(train_metrics)
            + " | test L_tot %.2f L_likelihood %.2f L_divergence %.2f" % tuple(test_metrics)
            + (f" | lr {learning_rate(s, epoch):.2e}" if s.lr_schedule != "constant" else "")
            + " | %.1f s" % seconds)
    SIGNALS.check()


def save_epoch(s, run, pictures, figures, seconds):
    """checkpoint.pt, metrics.csv, loss.png, the pictures after a new best training loss or the last epoch, and
    settings.json."""
    import checkpoint
    import plot_utils
    train_figures, test_figures = figures
    epoch, folder = run.epoch, pictures.folder
    history = run.history + [{"epoch": epoch, **{f"train_{k}": v for k, v in train_figures._asdict().items()},
                              **{f"test_{k}": v for k, v in test_figures._asdict().items()}, "seconds": seconds}]
    draw = train_figures.loss < run.best_loss or epoch + 1 == s.num_epochs
    best_loss = min(run.best_loss, train_figures.loss)
    # the checkpoint first: the other files never list an epoch it lacks (after a full disk, say)
    folder.write(results_folder.CHECKPOINT, lambda f: checkpoint.save(
        f, run.model, run.optimizer, epoch=epoch + 1, best_loss=best_loss, history=history,
        args=dataclasses.asdict(s), rng=checkpoint.rng_state(pictures.device)))
    run.epoch, run.best_loss, run.history = epoch + 1, best_loss, history
    folder.write(results_folder.METRICS_CSV, render_metrics(run.history))
    folder.write(results_folder.LOSS_PNG, lambda f: plot_utils.save_loss_curve(
        f, [r["epoch"] for r in run.history], [r["train_loss"] for r in run.history],
        [r["test_loss"] for r in run.history]))
    if draw:
        pictures.save(run.model, epoch)
    folder.write(results_folder.SETTINGS_JSON, render_settings(s, run, pictures.device))


def render_metrics(history):
    """metrics.csv's renderer: one row per finished epoch."""
    import checkpoint

    def render(f):
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(checkpoint.METRICS)
        for row in history:
            writer.writerow([row["epoch"]] + [f"{row[k]:.6f}" for k in checkpoint.METRICS[1:-1]]
                            + [f"{row['seconds']:.3f}"])
        f.write(text.getvalue().encode())
    return render


def render_settings(s, run, device):
    """settings.json's renderer: the flags of the run the checkpoint holds, its model's config, the epochs it
    finished, the torch version and the device, readable without torch."""
    import torch
    record = {"flags": dataclasses.asdict(s), "model": run.model.config.as_saved(), "epochs_finished": run.epoch,
              "torch": torch.__version__, "device": str(device)}
    return lambda f: f.write((json.dumps(record, indent=2, allow_nan=False) + "\n").encode())


# ---- evaluate

def final_evaluation(s, run, data, folder):
    """The importance-weighted likelihood bound and the denoising error, printed and in evaluation.json."""
    from tqdm import tqdm

    import training
    import vae
    test = data.test
    of = "log p(x|y)" if s.conditional else "log p(x)"
    evaluation = {"epochs": s.num_epochs, "test_images": len(test.x), **({"of": of} if s.conditional else {})}
    if s.iw_samples:
        t0 = time.perf_counter()
        chunks = vae.iw_chunks(len(test.x), s.iw_samples)
        with tqdm(total=len(test.x), desc=f"test {of}, K={s.iw_samples}", leave=False,
                  disable=not sys.stderr.isatty()) as bar:
            times = []

            def chunk_done():
                SIGNALS.check(phase="in the final evaluation")
                times.append(time.perf_counter() - t0)
                if len(times) == 2:  # the first chunk warms up: the second gives the pace
                    estimate = times[0] + (times[1] - times[0]) * (chunks - 1)
                    if estimate > LONG_EVALUATION_S:
                        say(f"test {of} with K={s.iw_samples} on {len(test.x)} images: about "
                            f"{duration(estimate)}")
            log_px = vae.mean_log_likelihood(run.model, test.x_hat, test.x, s.iw_samples, test.y,
                                             on_batch=bar.update, on_chunk=chunk_done)
        if not math.isfinite(log_px):
            raise NonFinite(f"test {of} bound", "the final evaluation")
        say("test %s >= -%.2f nats (K=%d, %.1f s)" % (of, -log_px, s.iw_samples, time.perf_counter() - t0))
        evaluation.update(K=s.iw_samples, test_log_likelihood=log_px)
    if s.add_noise:
        noisy, restored = training.mean_abs_error(run.model, test.x_hat, test.x, test.y)
        say("denoising: mean absolute error to the clean test images: noisy %.4f, restored %.4f" % (noisy, restored))
        evaluation.update(mae_noisy=noisy, mae_restored=restored)
    if s.iw_samples or s.add_noise:
        folder.write(results_folder.EVALUATION_JSON,
                     lambda f: f.write(json.dumps(evaluation, indent=2, allow_nan=False).encode()))


if __name__ == "__main__":
    try:
        main(script=sys.argv[0])
    except KeyboardInterrupt:  # a Ctrl-C after the run's handlers are gone
        fail("interrupted", 130)
    except BrokenPipeError:  # the reader of our output went away (| head): stop quietly, as Unix tools do
        quiet_stdout()
        sys.exit(141)
    finally:
        signals.ignore_signals()  # the line is printed: a later signal adds none while the interpreter exits
