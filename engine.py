"""Shared mechanics of the scripts: device choice, one training epoch, evaluation, checkpoints."""
import io
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from atomic import write_atomic
from net import LeNet5

CHECKPOINT_FORMAT = "lenet5-mnist"
EVAL_BATCH_SIZE = 2000   # evaluation keeps no activations, so big batches are cheap
DEVICES = ("auto", "cpu", "cuda", "mps")


class DeviceError(Exception):
    """The requested device is not available on this machine."""


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, unsafe or for another model; the message says which."""


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` takes CUDA, then Apple MPS, then the CPU; any other name forces that device."""
    cuda = torch.cuda.is_available()
    mps = torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name not in DEVICES:
        raise DeviceError(f"unknown device {name!r}: use one of {', '.join(DEVICES)}")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise DeviceError(f"device {name!r} is not available on this machine: "
                          f"use --device auto or --device cpu")
    return torch.device(name)


@dataclass
class Result:
    """Totals over a whole split: accuracy is correct / total, never a mean of batch accuracies."""
    loss: float
    correct: int
    total: int
    confusion: torch.Tensor | None = None    # [true class, predicted class] counts

    @property
    def accuracy(self) -> float:
        return self.correct / self.total

    @property
    def errors(self) -> int:
        return self.total - self.correct


def train_one_epoch(model: nn.Module, batches, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    on_step: Callable[[int, torch.Tensor, torch.Tensor, int], None] | None = None,
                    amp: bool = False) -> Result:
    """One pass over ``batches``; ``scheduler``, if given, is stepped after every batch.

    Loss and correct counts are summed on the device and read once at the end, so the loop
    never waits for the device. ``on_step(batch_size, loss_sum, correct, seen)`` is called after
    each step with those running device tensors (reading them is the caller's choice).
    ``amp`` runs the forward pass in bfloat16 autocast (no loss scaling needed for bfloat16).
    """
    model.train()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    for x, y in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if on_step is not None:
            on_step(len(y), loss_sum, correct, seen)
    return Result(loss_sum.item() / seen, int(correct.item()), seen)


@torch.inference_mode()
def evaluate(model: nn.Module, batches, num_classes: int = 10, amp: bool = False) -> Result:
    """Loss, accuracy and confusion matrix over all of ``batches``; eval mode, no autograd."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    for x, y in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        confusion += torch.bincount(y * num_classes + logits.argmax(1),
                                    minlength=num_classes * num_classes)
    model.train(was_training)
    confusion = confusion.view(num_classes, num_classes).cpu()
    total = int(confusion.sum())
    return Result(loss_sum.item() / total, int(confusion.trace()), total, confusion)


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class probabilities for a batch of normalized images."""
    was_training = model.training
    model.eval()
    probabilities = model(x).softmax(1)
    model.train(was_training)
    return probabilities


def save_checkpoint(path: str | Path, checkpoint: dict) -> None:
    """Write ``checkpoint`` atomically; on failure the previous file stays whole."""
    buffer = io.BytesIO()   # serialized first, so a write error surfaces as a plain OSError
    torch.save(checkpoint, buffer)
    try:
        write_atomic(path, lambda f: f.write(buffer.getbuffer()))
    except OSError as e:
        raise CheckpointError(f"could not write {path} ({e.strerror or e}); "
                              f"the previous version, if any, is kept") from None


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """Read a checkpoint safely (``weights_only=True``) onto ``device``.

    Returns the project's checkpoint dictionary. A bare ``state_dict`` from the tutorial code is
    wrapped in the same shape; that code trained on unnormalized [0, 1] pixels (mean 0, std 1).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: train one first with `python train.py`")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file: pass a checkpoint file with --checkpoint")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (an interrupted copy?): train again or restore it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")    # old-format files warn before failing
            checkpoint = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = re.search(r"GLOBAL (\S+)", str(e))
        if unsafe:
            raise CheckpointError(f"refused to load {path}: it refers to Python code "
                                  f"({unsafe[1]}) that loading would run; only tensors and "
                                  f"plain values are accepted") from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint "
                              f"(not a weights-only file)") from None
    except Exception:  # torch.load reports bad files as RuntimeError, EOFError, KeyError, ...
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint "
                              f"(truncated, damaged or another kind of file)") from None
    if isinstance(checkpoint, dict) and checkpoint.get("format") == CHECKPOINT_FORMAT:
        return checkpoint
    if isinstance(checkpoint, dict) and checkpoint and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint.items()):
        return {"format": CHECKPOINT_FORMAT, "model": checkpoint, "mean": 0.0, "std": 1.0,
                "classes": [str(d) for d in range(10)], "source": "state_dict"}
    raise CheckpointError(f"{path} is not a LeNet-5 checkpoint (no model weights found)")


def new_model(device: torch.device, num_classes: int = 10) -> LeNet5:
    """A freshly initialized LeNet-5 on ``device``.

    channels_last: the CPU convolutions (oneDNN) ran 1.3-1.5x faster per step in this layout.
    """
    return LeNet5(num_classes).to(device, memory_format=torch.channels_last)


def model_from_checkpoint(checkpoint: dict, device: torch.device, path: str | Path) -> LeNet5:
    """A LeNet-5 on ``device`` holding the checkpoint's weights, in eval mode."""
    model = new_model(device, num_classes=len(checkpoint["classes"]))
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise CheckpointError(f"{path} holds weights of another model ({first.rstrip('.')})"
                              ) from None
    return model.eval()
