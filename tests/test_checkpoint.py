"""checkpoint.py: what a checkpoint must be to be read, the copies the run gets, and restoring from it."""
import io
import os
import pathlib
import re
import struct
import time
import zipfile

import pytest
import torch

import checkpoint
import hardware
import training
import vae
from checkpoint import METRICS
from config import VAEConfig
from conftest import (
    DEVICES,
    adam_state,
    checkpoint_file,
    edited,
    metrics,
    one_element_moments,
    one_line_error,
    run,
    set_field,
    usage_error,
)


def test_load_rebuilds_the_model_in_eval_mode(good):
    path, model = good
    loaded = vae.load(path)
    assert not loaded.training and (loaded.dim_z, loaded.n_hidden, loaded.keep_prob) == (3, 24, 0.8)
    z = torch.randn(5, 3)
    assert torch.equal(loaded.decode(z), model.eval().decode(z))
    assert all(p.requires_grad for p in loaded.parameters())


def test_what_is_not_a_checkpoint_is_refused_saying_why(tmp_path):
    torch.save({"format": checkpoint.FORMAT}, tmp_path / "format_only.pt")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pickled.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    (tmp_path / "garbage.pt").write_bytes(os.urandom(500))
    cases = {"format_only.pt": "incomplete checkpoint (no model_args, model, optimizer",
             "pickled.pt": "corrupt or not a PyTorch file", "foreign.pt": "not a checkpoint of this VAE",
             "garbage.pt": "corrupt", "missing.pt": "no such file", "": "is a folder; give the checkpoint file in it"}
    for name, needle in cases.items():
        with pytest.raises(ValueError, match=re.escape(needle)):
            vae.load(tmp_path / name)


def expanded(t):
    """The same shape with every element one stored value: a stride-0 tensor of a one-element storage."""
    return torch.zeros(1, dtype=t.dtype).expand(*t.shape)


def set_moment(entry, key, make):
    def change(raw):
        state = raw["optimizer"]["state"][entry]
        state[key] = make(state)
    return change


DAMAGED = {
    "epoch as text": (set_field("epoch", value="2"), "bad epoch"),
    "epoch 0": (set_field("epoch", value=0), "bad epoch"),
    "epoch True": (set_field("epoch", value=True), "bad epoch"),
    "best_loss NaN": (set_field("best_loss", value=float("nan")), "bad best_loss"),
    "best_loss bool": (set_field("best_loss", value=True), "bad best_loss"),
    "best_loss 10**400": (set_field("best_loss", value=10**400), "bad best_loss"),
    "history 10**400": (lambda raw: raw["history"][0].update(train_loss=10**400), "bad history"),
    "n_hidden 2**31 - 1": (set_field("model_args", "n_hidden", value=2**31 - 1), "do not fit"),
    "weight sparse": (set_field("model", "encoder.net.3.weight", value=lambda t: t.to_sparse()), "do not fit"),
    "history NaN": (lambda raw: raw["history"][0].update(test_loss=float("nan")), "bad history"),
    "history inf": (lambda raw: raw["history"][0].update(train_nll=float("inf")), "bad history"),
    "history empty": (set_field("history", value=[]), "bad history"),
    "keep_prob text": (set_field("model_args", "keep_prob", value="0.5"), "invalid model arguments"),
    "keep_prob tiny": (set_field("model_args", "keep_prob", value=1e-40), "invalid model arguments"),
    "dim_z True": (set_field("model_args", "dim_z", value=True), "invalid model arguments"),
    "n_hidden 10**200": (set_field("model_args", "n_hidden", value=10**200), "invalid model arguments"),
    "conditional text": (set_field("model_args", "conditional", value="True"), "invalid model arguments"),
    "conditional 1": (set_field("model_args", "conditional", value=1), "invalid model arguments"),
    "conditional on plain weights": (set_field("model_args", "conditional", value=True), "do not fit"),
    "args conditional text": (set_field("args", value={"conditional": "yes"}), "bad args conditional"),
    "rng short": (set_field("rng", "cpu", value=lambda t: t[:100].clone()), "bad rng"),
    "rng float": (set_field("rng", "cpu", value=lambda t: t.float()), "bad rng"),
    "rng zeros": (set_field("rng", "cpu", value=lambda t: torch.zeros_like(t)), "bad rng"),
    "rng random bytes": (set_field("rng", "cpu", value=lambda t: torch.randint(0, 256, t.shape, dtype=torch.uint8)),
                         "bad rng"),
    "rng stride 0": (set_field("rng", "cpu", value=expanded), "bad rng"),
    "args not plain": (set_field("args", value={"learn_rate": torch.ones(1)}), "bad args"),
    "weight NaN": (lambda raw: raw["model"]["encoder.net.0.weight"].fill_(float("nan")), "not finite"),
    "weight inf": (lambda raw: raw["model"]["decoder.net.6.bias"].fill_(float("inf")), "not finite"),
    "weight stride 0": (set_field("model", "encoder.net.3.weight", value=expanded), "do not fit"),
    "weight float64": (set_field("model", "encoder.net.3.weight", value=lambda t: t.double()), "do not fit"),
    "weight a view of more": (set_field("model", "decoder.net.0.bias", value=lambda t: torch.cat([t, t])[:len(t)]),
                              "do not fit"),
}


@pytest.mark.parametrize("damage", list(DAMAGED))
def test_a_damaged_checkpoint_is_refused_when_read(good, damage, recwarn):
    change, needle = DAMAGED[damage]
    path = edited(good[0], change)
    recwarn.clear()
    with pytest.raises(ValueError, match=re.escape(needle)):
        checkpoint.read(path)
    assert not recwarn.list  # the one line is the error: no warning of torch's beside it


def test_a_small_file_claiming_a_huge_model_is_refused_before_any_model_is_built(tmp_path, good, monkeypatch):
    """Each weight a stride-0 view of one stored zero: a 60,000-unit model's shapes in a file of kilobytes."""
    def bomb(raw):
        raw["model_args"]["n_hidden"] = 60000
        shapes = VAEConfig.from_saved(raw["model_args"]).shapes()
        raw["model"] = {name: torch.zeros(1).expand(*shape) for name, shape in shapes.items()}
    path = edited(good[0], bomb)
    assert os.path.getsize(path) < 10**6  # the model it claims would take 14 GB
    built = []
    original = vae.VAE.__init__

    def counting(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(next(self.parameters()).device.type)
    monkeypatch.setattr(vae.VAE, "__init__", counting)
    with pytest.raises(ValueError, match="do not fit its model arguments"):
        vae.load(path)
    assert built == []  # the shapes come from the config: no model was made


def test_a_model_larger_than_the_free_memory_is_refused_before_it_is_built(good, monkeypatch):
    read = checkpoint.read(good[0])
    monkeypatch.setattr(hardware, "available_memory", lambda device_type="cpu": 1000)
    with pytest.raises(ValueError, match="the checkpoint's model needs about .* of memory; 1e-06 GB is available"):
        vae.from_checkpoint(read, torch.device("cpu"))


OPTIMIZER_REFUSED = {
    "one element moments": lambda raw: [v.update(exp_avg=torch.zeros(1), exp_avg_sq=torch.zeros(1))
                                        for v in raw["optimizer"]["state"].values()],
    "a stride-0 first moment": set_moment(0, "exp_avg", lambda s: expanded(s["exp_avg"])),
    "a stride-0 second moment": set_moment(0, "exp_avg_sq", lambda s: expanded(s["exp_avg_sq"])),
    "both moments of parameter 10 stride 0": lambda raw: raw["optimizer"]["state"][10].update(
        exp_avg=expanded(raw["optimizer"]["state"][10]["exp_avg"]),
        exp_avg_sq=expanded(raw["optimizer"]["state"][10]["exp_avg_sq"])),
    "missing parameter": lambda raw: raw["optimizer"]["state"].pop(3),
    "float64 step": set_moment(0, "step", lambda s: s["step"].double()),
    "NaN step": set_moment(0, "step", lambda s: torch.tensor(float("nan"))),
    "negative second moment": set_moment(1, "exp_avg_sq", lambda s: -s["exp_avg_sq"] - 1),
    "NaN first moment": set_moment(2, "exp_avg", lambda s: s["exp_avg"].fill_(float("nan"))),
    "extra key": set_moment(0, "max_exp_avg_sq", lambda s: s["exp_avg_sq"]),
}


@pytest.mark.parametrize("damage", list(OPTIMIZER_REFUSED))
def test_a_crafted_optimizer_state_is_refused_when_read(good, damage):
    path = edited(good[0], OPTIMIZER_REFUSED[damage])
    with pytest.raises(ValueError, match="optimizer state does not fit its model"):
        checkpoint.read(path)


def test_moments_in_another_layout_or_shared_are_copied_into_the_runs_own_tensors(good):
    """A transposed layout of the same values, or one tensor for both moments: the run gets its own contiguous
    copies with the values the file means (fused Adam reads the memory as it lies)."""
    path, _ = good
    read = checkpoint.read(path)
    moments = read.adam[2]

    def transposed_and_shared(raw):
        state = raw["optimizer"]["state"]
        state[2]["exp_avg"] = state[2]["exp_avg"].t().contiguous().t()
        state[4]["exp_avg"] = state[4]["exp_avg_sq"]
    other = checkpoint.read(edited(path, transposed_and_shared))
    assert torch.equal(other.adam[2]["exp_avg"], moments["exp_avg"]) and other.adam[2]["exp_avg"].is_contiguous()
    first, second = (other.adam[4][k].untyped_storage().data_ptr() for k in ("exp_avg", "exp_avg_sq"))
    assert first != second  # one tensor in the file, two of the run's own
    _, optimizer = training.restore(other, torch.device("cpu"), 1e-3)
    assert torch.equal(adam_state(optimizer, 2)["exp_avg"], moments["exp_avg"])
    assert adam_state(optimizer, 2)["exp_avg"].is_contiguous()


def test_older_history_names_are_migrated_on_the_copy_not_in_the_file(good):
    def older(raw):
        row = raw["history"][0]
        row["train_likelihood"], row["test_likelihood"] = row.pop("train_nll"), row.pop("test_nll")
    path = edited(good[0], older)
    read = checkpoint.read(path)
    assert set(read.history[0]) == set(checkpoint.METRICS)
    assert "train_likelihood" in torch.load(path, weights_only=True)["history"][0]


def test_unchanged_tells_whether_the_file_is_still_the_one_read(good):
    path, model = good
    read = checkpoint.read(path)
    assert checkpoint.unchanged(read)
    time.sleep(0.01)
    checkpoint_file(os.path.dirname(path), model)  # another run writes the same name again
    assert not checkpoint.unchanged(read)


@pytest.mark.parametrize("device", DEVICES)
def test_a_checkpoint_made_on_one_device_loads_on_another(good, tmp_path, device):
    path, model = good
    z = torch.randn(5, 3)
    loaded = vae.load(path, device=device)  # made on the CPU
    assert next(loaded.parameters()).device.type == device
    assert torch.allclose(loaded.decode(z.to(device)).cpu(), model.eval().decode(z), atol=1e-5)
    made_there = checkpoint_file(str(tmp_path), loaded.train(), name="there.pt")  # made on the device
    back = vae.load(made_there)
    assert next(back.parameters()).device.type == "cpu"
    assert torch.allclose(back.decode(z), loaded.eval().decode(z.to(device)).cpu(), atol=1e-5)


def test_a_file_larger_than_the_free_memory_is_refused_before_it_is_read(good, monkeypatch):
    monkeypatch.setattr(hardware, "available_memory", lambda device_type="cpu": 1000)
    with pytest.raises(ValueError, match="needs about .* of memory; 1e-06 GB is available"):
        checkpoint.read(good[0])


def test_a_crafted_optimizer_state_is_a_usage_error_not_a_crash(small_run, mnist_dir, tmp_path):
    path = edited(small_run / "checkpoint.pt", one_element_moments, tmp_path / "X" / "checkpoint.pt")
    done = run("--num_epochs", "3", "--resume", path)
    one_line_error(done, 2, "optimizer state does not fit its model")


TAMPERED = {
    "keep_prob '0.5'": (set_field("model_args", "keep_prob", value="0.5"), "invalid model arguments"),
    "keep_prob None": (set_field("model_args", "keep_prob", value=None), "invalid model arguments"),
    "keep_prob list": (set_field("model_args", "keep_prob", value=[0.5]), "invalid model arguments"),
    "rng short": (set_field("rng", "cpu", value=torch.zeros(10, dtype=torch.uint8)), "damaged checkpoint"),
    "rng float": (lambda c: c["rng"].update(cpu=c["rng"]["cpu"].float()), "damaged checkpoint"),
    "history strings": (set_field("history", value=["epoch 0"]), "bad history"),
    "history missing key": (lambda c: c["history"][0].pop("test_loss"), "bad history"),
    "learn_rate text": (set_field("args", "learn_rate", value="fast"), "bad args learn_rate"),
    "precision unknown": (set_field("args", "precision", value="fp8"), "bad args precision: must be one of fp32, bf16"),
    "batch_size float": (set_field("args", "batch_size", value=64.0), "bad args batch_size"),
}


@pytest.mark.parametrize("damage", list(TAMPERED))
def test_tampered_loadable_checkpoints_are_usage_errors_at_load(small_run, tmp_path, capsys, damage):
    change, needle = TAMPERED[damage]
    path = edited(small_run / "checkpoint.pt", change, tmp_path / "X" / "checkpoint.pt")
    err = usage_error(capsys, ["--resume", str(path), "--num_epochs", "2"])
    assert needle in err and err.count("\n") == 1, err


def test_a_checkpoint_with_the_older_column_names_resumes(small_run, mnist_dir, tmp_path):
    def older(checkpoint):
        for row in checkpoint["history"]:
            row["train_likelihood"], row["test_likelihood"] = row.pop("train_nll"), row.pop("test_nll")
    path = edited(small_run / "checkpoint.pt", older, tmp_path / "X" / "checkpoint.pt")
    done = run("--num_epochs", "2", "--PRR", "False", "--resume", path)
    assert done.status == 0, done.stderr
    rows = metrics(path.parent)
    assert list(rows[0]) == list(METRICS) and all(row["test_nll"] for row in rows) and len(rows) == 2


SAVED_OUT_OF_RANGE = {"kl_warmup": 10**400, "iw_train": 10**310, "batch_size": 10**310, "learn_rate": 10**400,
                      "num_epochs": -7, "precision": "fp8", "binarize": 1}


@pytest.mark.parametrize("name", list(SAVED_OUT_OF_RANGE))
def test_a_checkpoints_saved_flags_are_checked_as_flags_are(tmp_path, capsys, name):
    path = checkpoint_file(str(tmp_path), vae.VAE(VAEConfig(dim_z=2, n_hidden=8)))
    raw = torch.load(path, weights_only=True)
    raw["args"] = {"lr_schedule": "cosine", name: SAVED_OUT_OF_RANGE[name]}
    torch.save(raw, path)
    err = usage_error(capsys, ["--resume", path, "--num_epochs", "3"])
    assert f"is a damaged checkpoint (bad args {name}: must be" in err and err.count("\n") == 1, err


def test_a_flipped_byte_anywhere_in_the_file_is_refused(good, tmp_path):
    """The zip's CRC of every record is checked: a weight or a moment of Adam changed by one byte is refused,
    though torch.load would read it."""
    data = pathlib.Path(good[0]).read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        records = {info.filename: info for info in z.infolist()}
    weight = next(i for name, i in records.items() if name.endswith("/data/0"))  # the first tensor's bytes
    last = max(records.values(), key=lambda i: i.header_offset)  # the last tensor: Adam's state
    for info in (weight, last):
        name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
        start = info.header_offset + 30 + name_length + extra_length  # the record's bytes (stored, uncompressed)
        flipped = bytearray(data)
        flipped[start + info.file_size // 2] ^= 0x01
        path = tmp_path / "flipped.pt"
        path.write_bytes(flipped)
        torch.load(path, weights_only=True)  # torch reads it
        with pytest.raises(ValueError, match=f"is corrupt: its record .*{re.escape(info.filename.split('/')[-1])} "
                                             "fails its checksum"):
            checkpoint.read(path)


def test_a_path_that_is_not_a_file_is_named_as_what_it_is(tmp_path):
    os.mkfifo(tmp_path / "pipe.pt")
    os.symlink(tmp_path / "nothing", tmp_path / "dangling.pt")
    for name, what in (("pipe.pt", "a named pipe"), ("dangling.pt", "a symbolic link to nothing")):
        with pytest.raises(ValueError, match=f"{name} is {what}, not a checkpoint file"):
            checkpoint.read(str(tmp_path / name))
    with pytest.raises(ValueError, match="no such file"):
        checkpoint.read(str(tmp_path / "absent.pt"))
