"""Shared mechanics of the scripts: device, optimizer, one training epoch, evaluation,
checkpoints, and how a script checks its numbers and ends on a mistake."""
import argparse
import copy
import io
import os
import pickle
import re
import sys
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


def run_script(main: Callable[[], None], problems: tuple[type[Exception], ...]) -> None:
    """Run a script's ``main``. A person's mistake (one of ``problems``) ends in one line,
    ``error: ...``, and status 1; a reader that stops early (``python test.py | head``) ends it
    with status 1 and no traceback, as other command-line tools do."""
    try:
        main()
        sys.stdout.flush()    # a closed pipe must show here, not at interpreter exit
    except problems as e:
        sys.exit(f"error: {e}")
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit flush goes there
        sys.exit(1)


def ranged(kind, low=None, high=None, low_open=False, high_open=False):
    """An argparse type: ``kind`` (int or float) within [low, high], ends open where asked."""
    def check(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if (low is not None and (value < low or (low_open and value == low))) or \
                (high is not None and (value > high or (high_open and value == high))):
            lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
            hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
            raise argparse.ArgumentTypeError(f"must be {' and '.join(filter(None, [lo, hi]))}, "
                                             f"got {text}")
        return value
    return check


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


def new_optimizer(model: nn.Module, name: str, lr: float, momentum: float = 0.9,
                  weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW or SGD; on CUDA the fused kernels, which update every parameter in one launch."""
    fused = True if next(model.parameters()).is_cuda else None
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                               weight_decay=weight_decay, fused=fused)
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)


class EMA:
    """An exponential moving average of a model's weights, updated after every optimizer step.

    The average smooths out the noise of the last steps: it is the model that gets validated,
    saved and tested (README: the recipe). Early on the decay is lowered to
    (1 + n) / (10 + n) after n updates, so that short runs are not held near the random start.
    One fused ``lerp`` per step, no host sync.
    """

    def __init__(self, model: nn.Module, decay: float, updates: int = 0):
        self.decay, self.updates = decay, updates
        self.model = copy.deepcopy(model).requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1 - decay)


def _forward_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool,
                      label_smoothing: float, graphed: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    # Autocast's cache of bfloat16 weights must be off inside a CUDA graph capture.
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp,
                        cache_enabled=not graphed):
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    loss.backward()
    return loss.detach(), logits.detach()


def _add_to_totals(loss_sum: torch.Tensor, correct: torch.Tensor, loss: torch.Tensor,
                   logits: torch.Tensor, y: torch.Tensor) -> None:
    """Running sums on the device (in place, so a CUDA graph can capture them too)."""
    loss_sum += loss * len(y)
    correct += (logits.argmax(1) == y).sum()


class _GraphedStep:
    """Forward pass, loss, backward pass and running totals of one full-size batch, captured
    once as a CUDA graph and then replayed for every batch of that size.

    LeNet-5's kernels last microseconds on a GPU, so launching them one by one from Python is
    most of a step (README: CUDA graphs). The optimizer step stays outside the graph: the fused
    optimizers are one launch, and learning-rate schedules keep working unchanged. The graph
    writes the gradients into the same tensors every replay (they are the parameters' ``.grad``),
    so no ``zero_grad`` is needed between replays.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 loss_sum: torch.Tensor, correct: torch.Tensor, amp: bool,
                 label_smoothing: float):
        self.x, self.y = x.clone(), y.clone()      # the graph reads its batch from here
        side = torch.cuda.Stream()                 # capture wants a warmed-up side stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):                     # gradients only: the weights do not change
                _forward_backward(model, self.x, self.y, amp, label_smoothing, graphed=True)
        torch.cuda.current_stream().wait_stream(side)
        model.zero_grad(set_to_none=True)          # the captured backward then writes .grad
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            loss, logits = _forward_backward(model, self.x, self.y, amp, label_smoothing,
                                             graphed=True)
            _add_to_totals(loss_sum, correct, loss, logits, self.y)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()


def train_one_epoch(model: nn.Module, batches, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    on_step: Callable[[int, torch.Tensor, torch.Tensor, int], None] | None = None,
                    amp: bool = False, cuda_graph: bool = True, label_smoothing: float = 0.0,
                    ema: EMA | None = None) -> Result:
    """One pass over ``batches``; ``scheduler``, if given, is stepped after every batch.

    Loss and correct counts are summed on the device and read once at the end, so the loop
    never waits for the device. ``on_step(batch_size, loss_sum, correct, seen)`` is called after
    each step with those running device tensors (reading them is the caller's choice).
    ``amp`` runs the forward pass in bfloat16 autocast (no loss scaling needed for bfloat16).
    ``cuda_graph``: on a CUDA device, replay full-size batches from a CUDA graph (``_GraphedStep``);
    ignored elsewhere. Pass False for a ``torch.compile``d model, which manages its own.
    ``label_smoothing`` is passed to the training loss (so the reported loss includes it);
    ``ema``, if given, is updated after every optimizer step.
    """
    model.train()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    graphed = None
    seen = 0
    for x, y in batches:
        if cuda_graph and device.type == "cuda" and graphed is None:
            graphed = _GraphedStep(model, x, y, loss_sum, correct, amp, label_smoothing)
        if graphed is not None and x.shape == graphed.x.shape:
            graphed(x, y)
        else:
            # Zeroed in place: with a graph, these gradient tensors are the ones it writes.
            optimizer.zero_grad(set_to_none=graphed is None)
            loss, logits = _forward_backward(model, x, y, amp, label_smoothing)
            _add_to_totals(loss_sum, correct, loss, logits, y)
        optimizer.step()
        if ema is not None:
            ema.update(model)
        if scheduler is not None:
            scheduler.step()
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


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint safely (``weights_only=True``) into CPU memory.

    Loading moves the weights to the model's device and the optimizer state to its parameters'
    device, while random-number-generator states must stay CPU byte tensors: so nothing is
    mapped to the GPU here.

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
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
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
