"""Checkpoints: saved atomically, read safely, and a model and optimizer continue exactly."""
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

import datasets
from checkpoint import (CHECKPOINT_FORMAT, CheckpointError, load_checkpoint,
                        model_from_checkpoint, save_checkpoint)
from net import LeNet5

CPU = torch.device("cpu")


def test_checkpoint_round_trip_continues_identically(tmp_path):
    torch.manual_seed(0)
    model = LeNet5().to(memory_format=torch.channels_last)     # the layout the scripts use
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))

    def step(m, o):
        o.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        o.step()

    step(model, optimizer)
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, {"format": CHECKPOINT_FORMAT,
                           "model": model.state_dict(),
                           "optimizer": optimizer.state_dict(), "mean": datasets.MEAN,
                           "std": datasets.STD, "classes": datasets.CLASSES})
    loaded = load_checkpoint(path)
    fresh = model_from_checkpoint(loaded, CPU, path).train()
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    fresh_optimizer.load_state_dict(loaded["optimizer"])
    step(model, optimizer)
    step(fresh, fresh_optimizer)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_plain_state_dict_is_read_as_an_unnormalized_tutorial_model(tmp_path):
    path = tmp_path / "tutorial.pth"
    torch.save(LeNet5().state_dict(), path)
    checkpoint = load_checkpoint(path)
    assert (checkpoint["mean"], checkpoint["std"], checkpoint["dataset"]) == (0.0, 1.0, "mnist")
    model_from_checkpoint(checkpoint, CPU, path)


class Payload:
    """A pickle that creates a file when loaded, as a malicious checkpoint would."""
    marker: Path

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("save, message", [
    (lambda obj, path: torch.save({"model": obj}, path), "refers to Python code .*mkdir"),
    (lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=2)), "posix.mkdir"),
    (lambda obj, path: path.write_bytes(pickle.dumps(obj)), "not a readable"),
])
def test_code_in_a_checkpoint_never_runs(tmp_path, save, message):
    Payload.marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pth"
    save(Payload(), path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
    assert not Payload.marker.exists()


def write_truncated(path):
    torch.save(LeNet5().state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no checkpoint at .*python train.py"),
    (lambda p: p.mkdir(), "is not a file"),
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: p.write_text("these are not weights\n"), "not a readable PyTorch checkpoint"),
    (write_truncated, "not a readable PyTorch checkpoint"),
    (lambda p: torch.save({"epoch": 3}, p), "not a LeNet-5 checkpoint"),
    (lambda p: torch.save([1, 2, 3], p), "not a LeNet-5 checkpoint"),
])
def test_bad_checkpoint_files_are_named(tmp_path, make, message):
    path = tmp_path / "model.pth"
    make(path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


@pytest.mark.parametrize("state", [
    nn.Sequential(nn.Linear(784, 10)).state_dict(),                 # other keys
    {k: v[..., :1] if v.ndim else v for k, v in LeNet5().state_dict().items()},   # other shapes
])
def test_weights_of_another_model_are_refused(tmp_path, state):
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="weights of another model"):
        model_from_checkpoint(load_checkpoint(path), CPU, path)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "best_model.pth"
    save_checkpoint(path, {"model": LeNet5().state_dict(), "epoch": 1})
    before = path.read_bytes()

    def disk_full(fd):      # the data written so far cannot be stored
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device.*kept"):
        save_checkpoint(path, {"epoch": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["best_model.pth"]   # no temporary left


def test_a_stop_during_loading_stays_a_stop(tmp_path, monkeypatch):
    """Ctrl-C while torch.load reads is a clean stop (status 130), not "not a readable
    checkpoint": the reader's catch-all must not swallow it."""
    import signal

    import cli
    path = tmp_path / "model.pth"
    save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "model": LeNet5().state_dict()})

    def stopped(*args, **kwargs):
        raise cli.Interrupted(signal.SIGINT)
    monkeypatch.setattr(torch, "load", stopped)
    with pytest.raises(cli.Interrupted):
        load_checkpoint(path)
