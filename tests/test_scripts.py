"""Every script under benchmarks/ and res/ runs as its documentation shows, on the tests' small synthetic MNIST with
tiny models (seconds, not the hours of the real runs), so that none can rot unseen."""
import os
import subprocess
import sys

import pytest
import torch

import training
import vae
from config import VAEConfig
from conftest import ROOT, synthetic_mnist

pytestmark = pytest.mark.scripts  # python -m pytest -m scripts (CI runs them; see pytest.ini)

TINY = "--num_epochs 1 --n_hidden 16 --iw_samples 2 --PMLR_n_samples 50"


def script(*command, **env):
    """Run a script from the repository root with this interpreter as python; its output."""
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable, **env})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("args", [["--memory_epochs", "1"],
                                  ["--dim_z", "50", "--keep_prob", "1.0", "--iw_train", "5", "--iw_gradient", "dreg",
                                   "--binarize", "True"]])
def test_epoch_speed_prints_its_table_for_the_default_and_the_literature_model(args):
    out = script(sys.executable, "benchmarks/epoch_speed.py", "--data_dir", synthetic_mnist(), "--epochs", "1",
                 "--n_hidden", "16", *args)
    assert "| ours fp32 |" in out and "| floor bf16 |" in out and "ours fp32 / floor fp32: " in out
    assert ("ours fp32 / common" in out) == ("--iw_train" not in args)


@pytest.mark.parametrize("args", [[], ["--dim_z", "50", "--keep_prob", "1.0", "--iw_train", "5", "--iw_gradient",
                                        "dreg", "--binarize", "True"]])
def test_step_budget_prints_each_part_of_the_step_against_its_floor(args):
    out = script(sys.executable, "benchmarks/step_budget.py", "--data_dir", synthetic_mnist(), "--rounds", "1",
                 "--steps", "2", "--n_hidden", "16", *args)
    table = [line.strip("| ").split(" | ") for line in out.splitlines() if line.startswith("| ")]
    assert table[0] == ["what runs", "ms/step", "/ floor"]
    assert [name for name, _, _ in table[1:]] == [
        "the step: forward, backward, Adam", "without Adam's update",
        *(["without dropout (keep_prob 1.0)"] if not args else []),
        "the six linear layers and Adam", "the six linear layers alone", "floor: the matrix products alone"]
    assert all(float(ms) > 0 and float(ratio) > 0 for _, ms, ratio in table[1:])
    assert ("binarized" in out) == bool(args)


def test_step_budgets_rows_share_the_models_weights_and_take_away_what_they_say(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import step_budget
    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(4, 16, 0.5))
    dropless, linear = step_budget.without_dropout(model), step_budget.LinearLayersOnly(model, 3)
    weights = [id(w) for w in model.parameters()]
    assert [id(w) for w in dropless.parameters()] == weights == [id(w) for w in linear.parameters()]
    x = torch.rand(8, 784)
    dropless.train()
    assert torch.equal(dropless.encoder(x)[0], dropless.encoder(x)[0])  # no dropout in training
    assert not torch.equal(model.train().encoder(x)[0], model.encoder(x)[0])  # the model keeps its own
    objective = linear.loss(x, x)[0]
    objective.backward()
    assert all(w.grad is not None and not w.grad.any() for w in model.parameters())  # every layer, zero gradients
    before = [w.detach().clone() for w in model.parameters()]
    adam = training.adam(model, 1e-3)
    training.train_epoch(model, step_budget.NoUpdate(adam), [(x, x, None)])
    assert all(torch.equal(a, w) for a, w in zip(before, model.parameters(), strict=True))  # no update
    training.train_epoch(model, adam, [(x, x, None)])
    assert not all(torch.equal(a, w) for a, w in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("name", ["reproduce", "conditional", "benchmark_nll"])
def test_each_res_script_runs_its_commands_and_prints_its_table(tmp_path, name):
    with open(os.path.join(ROOT, "res", f"{name}.sh")) as f:
        runs = sum(line.startswith("run ") for line in f)  # each of the script's run commands
    out = script("bash", f"res/{name}.sh", synthetic_mnist(), str(tmp_path / "runs"), RUN_ARGS=TINY,
                 RES_DIR=str(tmp_path / "res"))
    assert runs > 0 and out.count("== python run_main.py") == runs
    assert "|---|" in out
    if name != "benchmark_nll":
        assert len(os.listdir(tmp_path / "res")) >= 7  # the pictures, copied where RES_DIR says, never into res/


def test_the_gpu_check_runs_its_cpu_fallback(tmp_path):
    out = script("bash", "benchmarks/gpu_check.sh", synthetic_mnist(), str(tmp_path),
                 GPU_CHECK_TESTS="test_auto_picks_the_cpu_without_a_gpu")
    assert "device: cpu" in out and "| default epoch, training only" in out and "FAILED" not in out


def test_a_second_invocation_moves_the_first_ones_logs_aside_and_a_used_gpu_check_folder_is_refused(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "vae.log").write_text("the first invocation's log")
    (runs / "vae.seconds").write_text("60")
    subprocess.run(["bash", "-c", 'source res/run_helper.sh results/x "$1" "$2"', "-", "data", str(runs)], cwd=ROOT,
                   check=True)
    assert (runs / "previous_logs_1" / "vae.log").read_text() == "the first invocation's log"
    assert (runs / "previous_logs_1" / "vae.seconds").read_text() == "60" and not (runs / "vae.log").exists()
    (tmp_path / "check").mkdir()
    (tmp_path / "check" / "pytest.log").write_text("an earlier check")
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "data", str(tmp_path / "check")], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "holds an earlier check's logs" in done.stderr
    assert os.listdir(tmp_path / "check") == ["pytest.log"]


def test_a_res_dir_that_holds_files_is_refused_before_any_run(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "input.jpg").write_text("my picture")
    done = subprocess.run(["bash", "res/reproduce.sh", "data", str(tmp_path / "runs")], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "RES_DIR": str(tmp_path / "mine")})
    assert done.returncode == 2 and "must be a new or empty folder" in done.stderr
    assert (tmp_path / "mine" / "input.jpg").read_text() == "my picture" and "== python" not in done.stdout
