"""The training core: device switch, model, optimizer, weight average, one training epoch
(replayed from a CUDA graph on a GPU), evaluation."""
import copy
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import cli
from net import LeNet5

# Evaluation keeps no activations, so big batches are cheap; on 2 CPU cores 1,000 evaluated the
# test set 1.4x faster than 2,000 (docs/speed.md).
EVAL_BATCH_SIZE = 1000
DEVICES = ("auto", "cpu", "cuda", "mps")
# A training picture labelled NO_CLASS holds none of the classes (a letter among digits,
# outliers.py): its loss is the cross-entropy to the uniform distribution, weighted by
# NO_CLASS_WEIGHT against a labelled picture's (outlier exposure, Hendrycks et al. 2019).
NO_CLASS = -1
NO_CLASS_WEIGHT = 0.5


class DeviceError(cli.Problem):
    """The requested device is not available on this machine."""


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity, where the system has one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


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


def new_model(device: torch.device, num_classes: int = 10) -> LeNet5:
    """A freshly initialized LeNet-5 on ``device``.

    channels_last: the CPU convolutions (oneDNN) ran 1.3-1.5x faster per step in this layout.
    """
    return LeNet5(num_classes).to(device, memory_format=torch.channels_last)


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
    """AdamW or SGD; fused (every parameter updated by one kernel) where that measured faster:
    both on CUDA (one launch), AdamW on the CPU (an epoch of the default recipe 1.2x faster;
    fused SGD gained nothing there, docs/speed.md)."""
    device = next(model.parameters()).device.type
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                               weight_decay=weight_decay, fused=device == "cuda" or None)
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay,
                             fused=device in ("cuda", "cpu") or None)


class EMA:
    """An exponential moving average of a model's weights, updated after every optimizer step.

    The average smooths out the noise of the last steps: it is the model that gets validated,
    saved and tested (docs/experiments.md, "The default recipe"). Early on the decay is lowered
    to (1 + n) / (10 + n) after n updates, so that short runs are not held near the random
    start. One fused ``lerp`` per step, no host sync.
    """

    def __init__(self, model: nn.Module, decay: float, updates: int = 0):
        self.decay, self.updates = decay, updates
        self.model = copy.deepcopy(model).requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1 - decay)


class Teachers:
    """Trained models whose readings the training loss also learns (knowledge distillation,
    Hinton et al. 2015): ``share`` of the loss is the divergence of the model's probabilities
    from the teachers' averaged ones, both softened by ``temperature``. The divergence is
    scaled by the temperature squared, which keeps its gradients the size of the labels' as the
    temperature changes."""

    def __init__(self, models: list[nn.Module], normalizations: list[tuple[float, float]],
                 share: float, temperature: float):
        """``normalizations[i]``: the (scale, shift) that turns the run's normalized pixels
        into what teacher i was trained on."""
        self.models = [model.eval().requires_grad_(False) for model in models]
        self.normalizations = normalizations
        self.share, self.temperature = share, temperature

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([
            model(x if (scale, shift) == (1, 0) else x * scale + shift).float()
            .div(self.temperature).softmax(1)
            for model, (scale, shift) in zip(self.models, self.normalizations)]).mean(0)

    def mix(self, loss: torch.Tensor, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The labels' ``loss`` of the batch ``x`` mixed with the teachers' share."""
        log_p = logits.float().div(self.temperature).log_softmax(1)
        divergence = F.kl_div(log_p, self.probabilities(x), reduction="batchmean")
        return (1 - self.share) * loss + self.share * self.temperature ** 2 * divergence


def _forward_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool,
                      label_smoothing: float, graphed: bool = False, weight: float = 1.0,
                      teachers: Teachers | None = None, with_no_class: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's mean loss and logits; the gradient is that of ``weight`` x the mean loss."""
    # Autocast's cache of bfloat16 weights must be off inside a CUDA graph capture.
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp,
                        cache_enabled=not graphed):
        logits = model(x)
        # A process whose slice of a short last batch is empty still joins DDP's gradient sum.
        loss = _loss(logits, y, label_smoothing, with_no_class) if len(y) else logits.sum() * 0
        if teachers is not None and len(y):
            loss = teachers.mix(loss, logits, x)
    (loss if weight == 1.0 else loss * weight).backward()
    return loss.detach(), logits.detach()


def _loss(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float,
          with_no_class: bool = True) -> torch.Tensor:
    """The batch's mean loss: (smoothed) cross-entropy for a labelled picture, the weighted
    cross-entropy to the uniform distribution for a picture of NO_CLASS. ``with_no_class=False``
    promises that ``y`` holds no NO_CLASS: the same loss and gradient in fewer operations."""
    if not with_no_class:
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    labelled = F.cross_entropy(logits, y.clamp(min=0), label_smoothing=label_smoothing,
                               reduction="none")
    uniform = -logits.float().log_softmax(1).mean(1)
    return torch.where(y == NO_CLASS, NO_CLASS_WEIGHT * uniform, labelled).mean()


def _add_to_totals(loss_sum: torch.Tensor, correct: torch.Tensor, labelled: torch.Tensor,
                   loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
                   with_no_class: bool = True) -> None:
    """Running sums on the device (in place, so a CUDA graph can capture them too): the loss
    over all pictures, the accuracy over the labelled ones."""
    loss_sum += loss * len(y)
    correct += (logits.argmax(1) == y).sum()
    labelled += (y != NO_CLASS).sum() if with_no_class else len(y)


class _GraphedStep:
    """Forward pass, loss, backward pass and running totals of one full-size batch, captured
    once as a CUDA graph and then replayed for every batch of that size.

    LeNet-5's kernels last microseconds on a GPU, so launching them one by one from Python is
    most of a step (docs/speed.md, "CUDA graphs"). The optimizer step stays outside the graph:
    the fused optimizers are one launch, and learning-rate schedules keep working unchanged. The
    graph writes the gradients into the same tensors every replay (they are the parameters'
    ``.grad``), so no ``zero_grad`` is needed between replays.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 loss_sum: torch.Tensor, correct: torch.Tensor, labelled: torch.Tensor,
                 amp: bool, label_smoothing: float, teachers: Teachers | None,
                 with_no_class: bool):
        self.x, self.y = x.clone(), y.clone()      # the graph reads its batch from here
        side = torch.cuda.Stream()                 # capture wants a warmed-up side stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):                     # gradients only: the weights do not change
                _forward_backward(model, self.x, self.y, amp, label_smoothing, graphed=True,
                                  teachers=teachers, with_no_class=with_no_class)
        torch.cuda.current_stream().wait_stream(side)
        model.zero_grad(set_to_none=True)          # the captured backward then writes .grad
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            loss, logits = _forward_backward(model, self.x, self.y, amp, label_smoothing,
                                             graphed=True, teachers=teachers,
                                             with_no_class=with_no_class)
            _add_to_totals(loss_sum, correct, labelled, loss, logits, self.y, with_no_class)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()


def train_one_epoch(model: nn.Module, batches, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    on_step: Callable[..., None] | None = None,
                    amp: bool = False, cuda_graph: bool = True, label_smoothing: float = 0.0,
                    ema: EMA | None = None, teachers: Teachers | None = None) -> Result:
    """One pass over ``batches``; ``scheduler``, if given, is stepped after every batch.

    Loss and correct counts are summed on the device and read once at the end, so the loop
    never waits for the device. ``on_step(batch_size, loss_sum, correct, labelled, seen)`` is
    called after each step with those running device tensors (reading them is the caller's
    choice) and the pictures seen; the accuracy is over the ``labelled`` ones (not NO_CLASS).
    ``amp`` runs the forward pass in bfloat16 autocast (no loss scaling needed for bfloat16).
    ``cuda_graph``: on a CUDA device, replay full-size batches from a CUDA graph (``_GraphedStep``);
    ignored elsewhere. Pass False for a ``torch.compile``d model, which manages its own.
    ``label_smoothing`` is passed to the training loss (so the reported loss includes it);
    ``ema``, if given, is updated after every optimizer step; ``teachers``, if given, take
    their share of the loss (``Teachers``).

    Under DistributedDataParallel ``batches`` yields this process's slice of every batch. DDP
    averages the processes' gradients; each slice's loss is weighted by its share of the batch
    times the number of processes, so the average is the whole batch's mean-loss gradient even
    when a short last batch splits unevenly. The totals returned are those of all processes.
    """
    model.train()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    labelled = torch.zeros((), dtype=torch.long, device=device)
    # Data without pictures of NO_CLASS take the plain cross-entropy: at batch 16 on the CPU a
    # step was 7 % faster than with the loss that also handles them (docs/speed.md).
    labels = getattr(batches, "labels", None)
    with_no_class = labels is None or bool((labels == NO_CLASS).any())
    graphed = None
    seen = 0
    parts = getattr(batches, "parts", 1)
    sizes = iter(batches.batch_sizes()) if parts > 1 else None
    for x, y in batches:
        weight = parts * len(y) / next(sizes) if sizes else 1.0
        if cuda_graph and device.type == "cuda" and graphed is None:
            graphed = _GraphedStep(model, x, y, loss_sum, correct, labelled, amp,
                                   label_smoothing, teachers, with_no_class)
        if graphed is not None and x.shape == graphed.x.shape:
            graphed(x, y)
        else:
            # Zeroed in place: with a graph, these gradient tensors are the ones it writes.
            optimizer.zero_grad(set_to_none=graphed is None)
            loss, logits = _forward_backward(model, x, y, amp, label_smoothing, weight=weight,
                                             teachers=teachers, with_no_class=with_no_class)
            _add_to_totals(loss_sum, correct, labelled, loss, logits, y, with_no_class)
        optimizer.step()
        if ema is not None:
            ema.update(model)
        if scheduler is not None:
            scheduler.step()
        seen += len(y)
        if on_step is not None:
            on_step(len(y), loss_sum, correct, labelled, seen)
    if parts > 1:
        seen = torch.tensor(seen, device=device)
        _sum_over_processes(loss_sum, correct, labelled, seen)
    return Result(loss_sum.item() / int(seen), int(correct.item()), int(labelled.item()))


def _sum_over_processes(*tensors: torch.Tensor) -> None:
    for tensor in tensors:
        torch.distributed.all_reduce(tensor)


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
    if getattr(batches, "parts", 1) > 1:       # each process evaluated its slices
        _sum_over_processes(loss_sum, confusion)
    model.train(was_training)
    confusion = confusion.view(num_classes, num_classes).cpu()
    total = int(confusion.sum())
    return Result(loss_sum.item() / total, int(confusion.trace()), total, confusion)
