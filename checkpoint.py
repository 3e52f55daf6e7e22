"""Checkpoints: write them atomically, read them safely, rebuild the model they hold.

A checkpoint describes itself (weights, hyperparameters, epoch, normalization, class names) and
holds only tensors and plain Python values, so ``torch.load(..., weights_only=True)`` reads it
and ``test.py`` and ``show.py`` need nothing else.
"""
import io
import pickle
import re
import warnings
from pathlib import Path

import torch

import cli
from atomic import write_atomic
from datasets import CLASSES
from engine import new_model
from net import LeNet5

CHECKPOINT_FORMAT = "lenet5-mnist"


class CheckpointError(cli.Problem):
    """A checkpoint is missing, unreadable, unsafe or for another model; the message says which."""


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
    Checkpoints from before the other data sets came are MNIST's, and say so here.
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
        return {"dataset": "mnist"} | checkpoint
    if isinstance(checkpoint, dict) and checkpoint and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint.items()):
        return {"format": CHECKPOINT_FORMAT, "model": checkpoint, "mean": 0.0, "std": 1.0,
                "dataset": "mnist", "classes": list(CLASSES), "source": "state_dict"}
    raise CheckpointError(f"{path} is not a LeNet-5 checkpoint (no model weights found)")


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
