"""Train LeNet-5 on MNIST and keep the checkpoint with the best validation accuracy (the latest
epoch that validation cannot tell from the best: docs/experiments.md, "Which epoch to keep").

    python train.py                      # the recipe in the block below
    python train.py --epochs 5 --lr 1e-3 # any setting can be overridden by a flag
    python train.py --resume             # continue save_model/last.pth after a stop
    torchrun --standalone --nproc-per-node 2 train.py   # the same run in two processes (ddp.py)
"""
import cli

if __name__ == "__main__":    # importing torch takes seconds: a stop during it ends quietly too
    cli.stop_quietly_while_starting()

import argparse
import csv
import functools
import io
import itertools
import math
import re
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import filelock
import torch
from tqdm import tqdm

import confidence
import datasets
import ddp
import engine
import outliers
import plots
from atomic import new_folder, write_atomic
from checkpoint import (CHECKPOINT_FORMAT, CheckpointError, load_checkpoint,
                        model_from_checkpoint, save_checkpoint)
from cli import ranged

# ---- Hyperparameters: edit them here, or override one with its flag (python train.py --help) ----
DATASET = "mnist"        # "mnist" (digits), "fashion-mnist" (clothing) or "kmnist" (hiragana)
EPOCHS = 80              # passes over the training images
BATCH_SIZE = 64          # images per optimizer step
OPTIMIZER = "adamw"      # "adamw" or "sgd"
LR = 3e-3                # learning rate; the peak rate when SCHEDULER is "onecycle"
MOMENTUM = 0.9           # SGD momentum (AdamW keeps its own betas)
WEIGHT_DECAY = 1e-2      # decoupled for AdamW, an L2 penalty for SGD
SCHEDULER = "onecycle"   # "onecycle" (stepped every batch), "step" (every epoch) or "none"
STEP_SIZE = 10           # "step": epochs between learning-rate drops
GAMMA = 0.1              # "step": factor of each drop
AUGMENT = True           # random rotation, scale, shear and shift of each training image
# None in the next two: the data set's own (strength 1 and no flips for digits and hiragana;
# flips alone for clothing, where a mirrored shoe is a shoe and a mirrored 7 is no digit)
AUGMENT_STRENGTH = None  # range scale, 1: 15 deg, 15 %, 10 deg shear, 3 px (None: the set's own)
FLIP = None              # also mirror half the images left to right (None: the set's own)
ELASTIC = 0.0            # with AUGMENT: an elastic distortion of this many pixels (0: none)
# Pictures of no digit (letters, signs, shapes, scribbles) trained to read as no class, so that
# an A is not a sure 4 (outlier exposure, outliers.py; docs/trust.md). Digit sets only.
OUTLIERS = 0.1           # drawn non-digits added, as a share of the training digits (0: none)
LABEL_SMOOTHING = 0.1    # share of each target spread over the other classes in the loss
EMA_DECAY = 0.999        # the weights validated and saved are this moving average (0: off)
# Knowledge distillation (engine.Teachers): the loss also learns the probabilities of trained
# models. Two or four default runs as teachers: not told apart from the default over 8 seeds
# (docs/experiments.md).
TEACHERS = None          # checkpoints of the same data set whose averaged readings are learned
DISTILL = 0.5            # with TEACHERS: the share of the loss that learns their readings
DISTILL_TEMPERATURE = 2.0  # with TEACHERS: both sides' logits are divided by it (softened)
VAL_SIZE = 5000          # images held out of the 60,000 to pick the epoch kept (0: keep the last)
# Validation cannot tell apart epochs within a standard error of its best accuracy (about five
# images of 5,000); the latest of them tested 0.06 points better than the best over 8 seeds.
KEEP_WITHIN = 1.0        # kept: the latest epoch within this many standard errors of the best
SEED = 0                 # fixes initialization, split, order and augmentation
AMP = False              # bfloat16 autocast, meant for GPUs (several times slower on our CPU)
COMPILE = False          # torch.compile: ~30 s to compile on 2 CPU cores, no clear gain there
SUBSET = None            # train on the first N training images only (validation shrinks alike)
DEVICE = "auto"          # "auto" (CUDA, then Apple MPS, then CPU), "cpu", "cuda" or "mps"
DATA_DIR = datasets.DATA_DIR  # holds MNIST/raw/ (FashionMNIST/raw/...): data/ beside the scripts
SAVE_DIR = "save_model"  # best_model.pth, last.pth, history.csv, curves.png
# ---------------------------------------------------------------------------------------------

OUTPUTS = ["best_model.pth", "last.pth", "history.csv", "curves.png"]
LOCK = ".train.lock"    # held by the run writing to the folder
STOP_CHECK_STEPS = 8    # with several processes, how often they agree whether to stop
# Seconds between drawings of curves.png during training (it is drawn after the last epoch
# too): a drawing takes about 0.2 s, 2-3 % of a default CPU epoch and much of a GPU one.
CURVES_EVERY = 30
HISTORY_FIELDS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]


# How each setting of the block is checked, whether it comes from a flag or an edit of the block
CHECKS = {
    "dataset": dict(choices=list(datasets.DATASETS)),
    "epochs": dict(type=ranged(int, 1)),
    "batch_size": dict(type=ranged(int, 1)),
    "optimizer": dict(choices=["adamw", "sgd"]),
    "lr": dict(type=ranged(float, 0, low_open=True)),
    "momentum": dict(type=ranged(float, 0, 1, high_open=True)),
    "weight_decay": dict(type=ranged(float, 0)),
    "scheduler": dict(choices=["onecycle", "step", "none"]),
    "step_size": dict(type=ranged(int, 1)),
    "gamma": dict(type=ranged(float, 0, 1, low_open=True)),
    "augment": dict(action=argparse.BooleanOptionalAction),
    "augment_strength": dict(type=ranged(float, 0, 2)),
    "flip": dict(action=argparse.BooleanOptionalAction),
    "elastic": dict(type=ranged(float, 0, 100)),
    "outliers": dict(type=ranged(float, 0, 1)),
    "label_smoothing": dict(type=ranged(float, 0, 1, high_open=True)),
    "ema_decay": dict(type=ranged(float, 0, 1, high_open=True)),
    "teachers": dict(nargs="+", metavar="CHECKPOINT"),
    "distill": dict(type=ranged(float, 0, 1)),
    "distill_temperature": dict(type=ranged(float, 0, low_open=True)),
    "val_size": dict(type=ranged(int, 0, datasets.TRAIN_SIZE - 1)),
    "keep_within": dict(type=ranged(float, 0)),
    "seed": dict(type=ranged(int, 0)),
    "amp": dict(action=argparse.BooleanOptionalAction),
    "compile": dict(action=argparse.BooleanOptionalAction),
    "subset": dict(type=ranged(int, 1, datasets.TRAIN_SIZE), metavar="N"),
    "device": dict(choices=engine.DEVICES),
    "data_dir": {},
    "save_dir": {},
}
# Where a run reads and writes, not what it trains: not saved with it, free to change on --resume
PLACES = ("device", "data_dir", "save_dir")
# None is a value of these: the data set's own (the first two), no teachers, every image
MAY_BE_NONE = ("augment_strength", "flip", "teachers", "subset")
# The rest make a run's hyperparameters, saved with it and restored by --resume.
HYPERPARAMETERS = [name for name in CHECKS if name not in PLACES]


def block() -> dict[str, tuple[object, str]]:
    """Each setting of the block at the top of this file, as it is now: its value and its
    comment, which is the flag's help. The block is the one place where either is written."""
    source = Path(__file__).read_text(encoding="utf-8")
    lines = re.findall(r"(?m)^([A-Z][A-Z_]*) = .*?  #\s*(.+)$", source)
    return {name.lower(): (globals()[name], comment.strip()) for name, comment in lines
            if name.lower() in CHECKS}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train LeNet-5 on MNIST (or Fashion-MNIST, "
                                                 "KMNIST); every default is the block at the "
                                                 "top of train.py.")
    for name, (value, comment) in block().items():
        shown = comment if value is None else f"{comment} (default: {value})"
        # None marks a setting "not given": parse_args fills it in from the block, and
        # --resume tells conflicting flags apart by it.
        parser.add_argument("--" + name.replace("_", "-"), help=shown.replace("%", "%%"),
                            **CHECKS[name])
    parser.add_argument("--resume", action="store_true",
                        help="continue the run saved in SAVE_DIR/last.pth with its settings")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, with every hyperparameter not given taken from the block at the top;
    ``args.given`` names the hyperparameters that were given as flags."""
    parser = make_parser()
    args = parser.parse_args(argv)
    args.given = {name for name in HYPERPARAMETERS if getattr(args, name) is not None}
    for name, (value, _) in block().items():
        if getattr(args, name) is None:
            try:
                setattr(args, name, block_value(name, value))
            except ValueError as e:
                parser.error(f"{name.upper()} = {value!r} at the top of train.py: {e}")
    dataset = datasets.DATASETS[args.dataset]
    if args.augment_strength is None:
        args.augment_strength = dataset.augment_strength
    if args.flip is None:
        args.flip = dataset.flip
    return args


def block_value(name: str, value: object) -> object:
    """A value of the block, checked as its flag is and of the type the flag gives: an edit
    can make it a string ("3e-3"), a float where a count belongs, or a lone file name where a
    list belongs. Raises ValueError saying what is wrong."""
    options = CHECKS[name]
    if value is None:
        if name not in MAY_BE_NONE:
            raise ValueError("None is not one of its values")
    elif "choices" in options:
        if value not in options["choices"]:
            raise ValueError(f"choose from {', '.join(map(repr, options['choices']))}")
    elif options.get("action") is argparse.BooleanOptionalAction:
        if not isinstance(value, bool):
            raise ValueError("expected True or False (without quotes)")
    elif "nargs" in options:
        if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            raise ValueError('expected a list of files, such as ["teacher.pth"]')
    elif "type" in options:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("expected a number (without quotes)")
        try:
            return options["type"](str(value))     # a count written 2.5 is refused, not cut
        except argparse.ArgumentTypeError as e:
            raise ValueError(str(e)) from None
    elif not isinstance(value, (str, Path)):
        raise ValueError('expected a folder, such as "save_model"')
    return value


@contextmanager
def save_dir_of(args: argparse.Namespace, world: ddp.World) -> Iterator[Path]:
    """The output folder, held by this run until the block ends. The first process creates
    it, refuses it when another run holds it (a lock that the system drops with its holder,
    so a kill -9 leaves none behind), proves it writable and removes the temporary files that
    a killed run left, all before any training starts."""
    folder = Path(args.save_dir)
    if not world.main:
        yield folder
        return
    lock = filelock.FileLock(folder / LOCK)
    with ExitStack() as held:
        try:
            held.enter_context(new_folder(folder))
            lock.acquire(timeout=0)
        except filelock.Timeout:
            raise CheckpointError(f"another train.py is writing to {folder}: let it finish (or "
                                  f"stop it), or pass another --save-dir") from None
        except OSError as e:
            raise CheckpointError(f"cannot write to the save folder {folder} "
                                  f"({e.strerror or e}): pass a writable --save-dir") from None
        held.callback(lock.release)
        for name in OUTPUTS:   # temporary files a kill -9 left behind mid-write
            for leftover in folder.glob(f".{name}.*.tmp"):
                leftover.unlink(missing_ok=True)
        try:
            yield folder
        except BaseException:
            if [file.name for file in folder.iterdir()] == [LOCK]:  # a run that wrote nothing
                (folder / LOCK).unlink()                              # leaves nothing
            raise


def saved_run(args: argparse.Namespace, world: ddp.World) -> dict | None:
    """last.pth when this run continues one, else None: with --resume, or when torchrun
    restarted the run after a failure and last.pth is this run's (by torchrun's run id). The
    first process reads it, for all."""
    if not (args.resume or world.restarts):
        return None
    state, last = None, Path(args.save_dir) / "last.pth"
    if world.main:
        try:
            if args.resume and not last.exists():
                raise CheckpointError(f"nothing to resume: {args.save_dir} holds no last.pth. "
                                      f"Pass the --save-dir of the run to continue")
            state = load_checkpoint(last)
        except CheckpointError as e:
            state = e
        if not args.resume and (isinstance(state, CheckpointError) or
                                state.get("run_id") != world.run_id):
            state = None    # the failure came before the first epoch ended, or an older run's
    state = ddp.share(state, world)
    if isinstance(state, CheckpointError):
        raise state
    return state


def adopt_saved_settings(args: argparse.Namespace, state: dict, device: torch.device,
                         world: ddp.World) -> None:
    """Make ``args`` the saved run's hyperparameters, refusing flags that contradict them. The
    run may continue on another number of processes: its data stream and state do not depend
    on it."""
    if "optimizer" not in state:
        raise CheckpointError(f"{args.save_dir}/last.pth holds no training state to "
                              f"resume (only weights)")
    if state["device"] != device.type:
        raise cli.UsageError(f"the run was trained on {state['device']}; resume it there "
                             f"with --device {state['device']}")
    # Runs saved before these settings existed trained MNIST without them.
    saved = ({"label_smoothing": 0.0, "ema_decay": 0.0, "dataset": "mnist", "flip": False,
              "keep_within": 0.0, "elastic": 0.0, "outliers": 0.0, "teachers": None,
              "distill": DISTILL, "distill_temperature": DISTILL_TEMPERATURE} | state["hparams"])
    for name in sorted(args.given - {"epochs"}):
        if getattr(args, name) != saved[name]:
            raise cli.UsageError(f"--{name.replace('_', '-')} {getattr(args, name)} conflicts "
                                 f"with the run being resumed ({saved[name]}); drop it, or "
                                 f"start a new run without --resume")
    done, planned = state["epoch"], saved["epochs"]
    epochs = args.epochs if "epochs" in args.given else planned
    if done < planned and epochs != planned:
        raise cli.UsageError(f"the run stopped at epoch {done} of {planned}; resume it without "
                             f"--epochs, then extend it with --resume --epochs N")
    if done == planned and epochs <= done and not world.restarts:
        raise cli.UsageError(f"the run in {args.save_dir}/last.pth finished all {done} epochs: "
                             f"pass --epochs N with N > {done} to train it further")
    for name in HYPERPARAMETERS:
        setattr(args, name, saved[name])
    args.epochs = epochs


def make_batches(args, device: torch.device, generator: torch.Generator, world: ddp.World):
    """Training, validation (None when --val-size is 0) and test batches; with several
    processes each takes its slice of every training and validation batch. Every file is read
    and verified here, before any training starts."""
    images, labels = datasets.load(args.data_dir, "train", args.dataset)
    test_images, test_labels = datasets.load(args.data_dir, "test", args.dataset)
    mean, std = datasets.normalization(images)    # of all training images, even with --subset
    val_size = args.val_size
    if args.subset is not None:
        images, labels = images[:args.subset], labels[:args.subset]
        val_size = datasets.scaled_val_size(val_size, args.subset)
    if val_size >= len(labels):
        raise cli.UsageError(f"--val-size {val_size} leaves no images to train on")
    train_idx, val_idx = datasets.train_val_split(len(labels), val_size, args.seed)
    train_images, train_labels = images[train_idx], labels[train_idx]
    if args.outliers and datasets.DATASETS[args.dataset].digits:
        drawn = outliers.drawings(round(args.outliers * len(train_idx)), args.seed)
        train_images = torch.cat([train_images, drawn])
        train_labels = torch.cat([train_labels, drawn.new_full((len(drawn),), engine.NO_CLASS,
                                                               dtype=torch.long)])
    part = (world.rank, world.size)
    train_batches = datasets.Batches(train_images, train_labels, args.batch_size,
                                     device, mean, std, shuffle=True, generator=generator,
                                     augment=args.augment_strength if args.augment else 0.0,
                                     flip=args.augment and args.flip,
                                     elastic=args.elastic if args.augment else 0.0, part=part)
    val_batches = (datasets.Batches(images[val_idx], labels[val_idx], engine.EVAL_BATCH_SIZE,
                                    device, mean, std, part=part) if val_size else None)
    return train_batches, val_batches, datasets.Batches(test_images, test_labels,
                                                        engine.EVAL_BATCH_SIZE, device, mean, std)


def load_teachers(args, device: torch.device, batches: datasets.Batches
                  ) -> engine.Teachers | None:
    """The --teachers, each fed the pixels normalized as it was trained (a tutorial state_dict
    was trained on unnormalized ones); none may be a file that this run writes over."""
    if not args.teachers:
        return None
    models, normalizations = [], []
    written = {(Path(args.save_dir) / name).resolve() for name in OUTPUTS}
    for path in args.teachers:
        if Path(path).resolve() in written:
            raise cli.UsageError(f"the teacher {path} is where this run saves: copy it "
                                 f"elsewhere or pass another --save-dir")
        teacher = load_checkpoint(path)
        if teacher["dataset"] != args.dataset:
            raise cli.UsageError(f"the teacher {path} was trained on {teacher['dataset']}, "
                                 f"not {args.dataset}: pass teachers of the same data set")
        models.append(model_from_checkpoint(teacher, device, path))
        scale = batches.std / teacher["std"]
        normalizations.append((scale, (batches.mean - teacher["mean"]) / teacher["std"]))
    return engine.Teachers(models, normalizations, args.distill, args.distill_temperature)


def make_scheduler(optimizer, args, epochs: int, steps_per_epoch: int):
    """The schedule, and whether it is stepped per batch (OneCycle) or per epoch (StepLR)."""
    if args.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=args.lr, epochs=epochs, steps_per_epoch=steps_per_epoch), True
    if args.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=args.step_size, gamma=args.gamma), False
    return None, False


def restore(state: dict, args, model, ema, optimizer, generator, steps_per_epoch: int):
    """Put the saved run's weights, average, optimizer and random states back; returns the
    schedule as ``make_scheduler`` does."""
    model.load_state_dict(state["model"] if ema is None else state["train_weights"])
    if ema is not None:
        ema.model.load_state_dict(state["model"])
        ema.updates = state["ema_updates"]
    done = state["epoch"]
    if done == state["hparams"]["epochs"] < args.epochs and args.scheduler == "onecycle":
        # A finished OneCycle run gets a new cycle of its own over the added epochs (a
        # restarted one that has none to add only finishes).
        optimizer.load_state_dict(state["optimizer"])
        scheduler, per_batch = make_scheduler(optimizer, args, args.epochs - done,
                                              steps_per_epoch)
    else:
        # Schedulers set the learning rate when created: restore the optimizer after that.
        scheduler, per_batch = make_scheduler(optimizer, args, args.epochs, steps_per_epoch)
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    generator.set_state(state["rng"]["data"])
    return scheduler, per_batch


def make_checkpoint(args, judged, epoch: int, val: engine.Result | None,
                    batches: datasets.Batches, world: ddp.World) -> dict:
    """What best_model.pth holds: the judged weights and everything needed to use them."""
    return {
        "format": CHECKPOINT_FORMAT, "model": judged.state_dict(),
        "hparams": {name: getattr(args, name) for name in HYPERPARAMETERS}, "epoch": epoch,
        "val_accuracy": val.accuracy if val else None, "dataset": args.dataset,
        "mean": batches.mean, "std": batches.std,
        "classes": list(datasets.DATASETS[args.dataset].classes),
        "torch_version": str(torch.__version__), "processes": world.size,
        "uncalibrated": "calibration is added to best_model.pth when training ends",
    }


def training_state(model, ema, optimizer, scheduler, generator, history: list[dict],
                   device: torch.device, world: ddp.World) -> dict:
    """What last.pth adds to the checkpoint so that --resume continues exactly (and torchrun's
    id of the run, by which a restarted process knows the file is its own)."""
    return {
        "run_id": world.run_id,
        "train_weights": model.state_dict() if ema else None,
        "ema_updates": ema.updates if ema else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler else None,
        "rng": {"torch": torch.get_rng_state(), "data": generator.get_state()},
        "history": history, "device": device.type,
    }


def write_history(path: Path, history: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_atomic(path, lambda f: f.write(text.getvalue().encode()))


def show_progress(bar: tqdm, batch_size: int, loss_sum, correct, labelled, seen: int) -> None:
    """``train_one_epoch``'s per-step callback: advance the bar, show running figures."""
    bar.update(1)
    if not bar.disable and bar.n % 25 == 0:   # reading the device costs a sync
        bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}",
                        acc=f"{correct.item() / max(1, labelled.item()):.2%}")


def history_row(epoch: int, fit: engine.Result, val: engine.Result | None, lr: float) -> dict:
    """One epoch's line of history.csv (the learning rate is the one the epoch started with)."""
    return {"epoch": epoch, "train_loss": round(fit.loss, 6),
            "train_accuracy": round(fit.accuracy, 6),
            "val_loss": round(val.loss, 6) if val else None,
            "val_accuracy": round(val.accuracy, 6) if val else None, "lr": lr}


def what_a_stop_keeps(args, world: ddp.World, since: float) -> str:
    """What a stop leaves behind, as the files show it: last.pth, when this run wrote it (after
    ``since``) or continues it."""
    last = Path(args.save_dir) / "last.pth"
    ours = last.exists() and (args.resume or world.restarts or last.stat().st_mtime >= since)
    if not ours:
        return "no epoch of this run had finished, so nothing was saved"
    epoch = load_checkpoint(last)["epoch"]
    if epoch == args.epochs:
        return (f"training had finished; {args.save_dir}/best_model.pth is complete "
                f"(python test.py evaluates it)")
    return (f"{last} holds epoch {epoch} of {args.epochs}; continue with: python train.py "
            f"--resume" + (f" --save-dir {args.save_dir}" if args.save_dir != SAVE_DIR else ""))


def main(argv=None) -> None:
    args = parse_args(argv)
    since = time.time()
    world, device = ddp.start(args.device)
    # One process alone stops at once; processes training together note a stop and agree on
    # the step to stop at, so that none is left waiting for another.
    stops = cli.stops_noted() if world.size > 1 else cli.stops_raise_interrupted()
    try:
        with stops as note, save_dir_of(args, world) as save_dir:
            train(args, world, device, save_dir, note)
    except cli.UsageError as e:
        if world.main:
            make_parser().error(str(e))
        sys.exit(2)
    except cli.Interrupted as stop:
        if world.main:
            print(f"\nstopped by {stop}: {what_a_stop_keeps(args, world, since)}",
                  file=sys.stderr)
        sys.exit(128 + stop.signum)
    except cli.Problem:
        if world.main:
            raise
        sys.exit(1)
    except RuntimeError as e:     # torch.distributed.DistError is one too
        if world.size == 1 or not ddp.lost_peer(e):
            raise
        # Another process died: torchrun stops this one and restarts all with --max-restarts.
        sys.exit(f"error: process {world.rank} lost the others of the run "
                 f"({str(e).splitlines()[0][:200]})")
    finally:
        ddp.stop()


def train(args: argparse.Namespace, world: ddp.World, device: torch.device, save_dir: Path,
          stop: cli.StopNote | None) -> None:
    """The run; with several processes (``world``), only the first prints and writes files,
    and all of them stop together at the step after ``stop`` notes a signal in any."""
    say = print if world.main else lambda *_, **__: None
    if args.batch_size % world.size:
        raise cli.UsageError(f"--batch-size {args.batch_size} does not split evenly over "
                             f"{world.size} processes: pick a multiple of {world.size}")
    state = saved_run(args, world)
    if state is not None:
        adopt_saved_settings(args, state, device, world)

    # Data: the generator drives the order and the augmentation of every pass.
    generator = torch.Generator(device).manual_seed(args.seed)
    train_batches, val_batches, test_batches = make_batches(args, device, generator, world)
    teachers = load_teachers(args, device, train_batches)

    # Model, weight average, optimizer and schedule (or all of them as a stopped run left them)
    torch.manual_seed(args.seed)
    model = engine.new_model(device)
    ema = engine.EMA(model, args.ema_decay) if args.ema_decay else None
    judged = ema.model if ema else model    # the weights validated, saved and tested
    optimizer = engine.new_optimizer(model, args.optimizer, args.lr, args.momentum,
                                     args.weight_decay)
    step_model = stepping(model, args, world, device)
    if state is None:
        scheduler, per_batch = make_scheduler(optimizer, args, args.epochs, len(train_batches))
        done, history = 0, []
    else:
        scheduler, per_batch = restore(state, args, model, ema, optimizer, generator,
                                       len(train_batches))
        done, history = state["epoch"], state["history"]
        if world.main:
            write_history(save_dir / "history.csv", history)
        say(f"resuming {save_dir}/last.pth after epoch {done} of {args.epochs}")

    say(heading(args, world, device, train_batches, val_batches))
    drawn = time.monotonic()    # curves.png: CURVES_EVERY seconds apart, and at the end
    for epoch in range(done + 1, args.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        with tqdm(total=len(train_batches), desc=f"epoch {epoch}/{args.epochs}",
                  unit="batch", leave=False, disable=None if world.main else True) as bar:
            on_step = functools.partial(show_progress, bar)
            if world.size > 1:
                on_step = stopping_together(on_step, stop, device)
            # A CUDA graph cannot hold DDP's gradient all-reduce (it runs on its own
            # stream, outside the captured one): under DDP each step is launched anew.
            fit = engine.train_one_epoch(step_model, train_batches, optimizer,
                                         scheduler if per_batch else None, on_step,
                                         amp=args.amp,
                                         cuda_graph=not args.compile and world.size == 1,
                                         label_smoothing=args.label_smoothing, ema=ema,
                                         teachers=teachers)
        train_seconds = time.perf_counter() - start
        if scheduler is not None and not per_batch:
            scheduler.step()
        val = engine.evaluate(judged, val_batches, amp=args.amp) if val_batches else None
        seconds = time.perf_counter() - start
        stop_if_diverged(epoch, fit, val, args)

        checkpoint = make_checkpoint(args, judged, epoch, val, train_batches, world)
        history.append(history_row(epoch, fit, val, lr))
        keep = kept_epoch(history, val.total, args.keep_within) if val else epoch
        if world.main:
            if keep == epoch:
                save_checkpoint(save_dir / "best_model.pth", checkpoint)
            write_history(save_dir / "history.csv", history)
            if epoch == args.epochs or time.monotonic() - drawn >= CURVES_EVERY:
                plots.training_curves(history, save_dir / "curves.png", keep)
                drawn = time.monotonic()
            save_checkpoint(save_dir / "last.pth", checkpoint | training_state(
                model, ema, optimizer, scheduler, generator, history, device, world))
        say(epoch_line(history, fit, val, seconds, fit.total / train_seconds), flush=True)

    if not world.main:
        return
    kept, tested = finish(save_dir / "best_model.pth", device, train_batches, val_batches,
                          test_batches)
    print(summary(kept, history, tested, save_dir))


def stop_if_diverged(epoch: int, fit: engine.Result, val: engine.Result | None,
                     args: argparse.Namespace) -> None:
    """Ends the run before a loss of nan or inf reaches the files: the weights it leaves are
    no model, and every later epoch would be the same."""
    loss = next((r.loss for r in (fit, val) if r and not math.isfinite(r.loss)), None)
    if loss is not None:
        kept = f"; {args.save_dir} keeps epoch {epoch - 1}" if epoch > 1 else ""
        raise cli.Problem(f"the loss became {loss} in epoch {epoch}: training diverged. Lower "
                          f"the learning rate (--lr, {args.lr:g} in this run) and train "
                          f"again{kept}")


def kept_epoch(history: list[dict], val_size: int, within: float) -> int:
    """The epoch to keep so far: the latest whose validation accuracy is within ``within``
    standard errors (binomial, over ``val_size`` images) of the best one's."""
    accuracies = [row["val_accuracy"] for row in history]
    best = max(accuracies)
    margin = within * (best * (1 - best) / val_size) ** 0.5
    return max(row["epoch"] for row in history if row["val_accuracy"] >= best - margin)


def stepping(model, args: argparse.Namespace, world: ddp.World, device: torch.device):
    """The model as the training steps call it: under DDP with several processes (which
    averages the processes' gradients in the backward pass), compiled with --compile; it
    shares ``model``'s weights."""
    if world.size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if args.compile else model


def heading(args: argparse.Namespace, world: ddp.World, device: torch.device,
            train_batches: datasets.Batches, val_batches: datasets.Batches | None) -> str:
    """What the run trains on, where, and the head of the per-epoch table."""
    threads = torch.get_num_threads()
    processes = (f", {world.size} processes of {threads} thread{'' if threads == 1 else 's'}"
                 if world.size > 1 else "")
    drawn = int((train_batches.labels == engine.NO_CLASS).sum())
    teachers = len(args.teachers or [])
    taught = f" taught by {teachers} trained model{'s' * (teachers > 1)}" if teachers else ""
    return (f"training LeNet-5 on {len(train_batches.labels) - drawn:,} "
            f"{datasets.DATASETS[args.dataset].title} images"
            f"{f' and {drawn:,} drawn non-digits' if drawn else ''} (validation "
            f"{len(val_batches.labels) if val_batches else 0:,}){taught} on {device.type} for "
            f"{args.epochs} epoch{'' if args.epochs == 1 else 's'}{processes}\n"
            f"{'epoch':>5} {'train loss':>10} {'train acc':>9} {'val loss':>8} {'val acc':>8} "
            f"{'lr':>8} {'time':>6} {'img/s':>7}")


def epoch_line(history: list[dict], fit: engine.Result, val: engine.Result | None,
               seconds: float, images_per_second: float) -> str:
    """The last epoch of ``history`` as a row of the table that ``heading`` begins; "best"
    marks a validation accuracy above every earlier epoch's."""
    row = history[-1]
    val_loss, val_accuracy = (loss_text(val.loss), f"{val.accuracy:.2%}") if val else ("-", "-")
    best = val is not None and all(val.accuracy > earlier["val_accuracy"]
                                   for earlier in history[:-1])
    return (f"{row['epoch']:>5} {loss_text(fit.loss):>10} {fit.accuracy:>9.2%} {val_loss:>8} "
            f"{val_accuracy:>8} {row['lr']:>8.2e} {seconds:>5.1f}s "
            f"{images_per_second:>7,.0f}{'  best' if best else ''}")


def loss_text(loss: float) -> str:
    """A loss in the table's columns: a run on the way to diverging reaches 1e18."""
    return f"{loss:.4f}" if loss < 1000 else f"{loss:.2e}"


def summary(kept: dict, history: list[dict], tested: engine.Result, save_dir: Path) -> str:
    """The run's last lines: the epoch kept and why, its calibration, its test accuracy."""
    if kept["val_accuracy"] is None:
        which = f"kept epoch {kept['epoch']}, the last, in {save_dir}/best_model.pth"
    else:
        best = max(history, key=lambda row: row["val_accuracy"])
        # The history's accuracies are rounded (history.csv); compare the kept epoch's own row.
        row = next(row for row in history if row["epoch"] == kept["epoch"])
        within = kept["hparams"]["keep_within"]
        why = ("the best" if row["val_accuracy"] == best["val_accuracy"] else
               f"within {'a' if within == 1 else f'{within:g}'} standard error"
               f"{'' if within == 1 else 's'} of the best ({best['val_accuracy']:.2%} at epoch "
               f"{best['epoch']})")
        which = (f"kept epoch {kept['epoch']} in {save_dir}/best_model.pth\n"
                 f"its validation accuracy {kept['val_accuracy']:.2%} is {why}")
    calibrated = (f"probabilities calibrated on the validation images: temperature "
                  f"{kept['calibration']['temperature']:.3f}" if "calibration" in kept else
                  f"{kept['uncalibrated']}: probabilities are not calibrated, and nothing is "
                  f"refused as not a digit")
    return (f"{which}\n{calibrated}\n"
            f"test accuracy {tested.accuracy:.2%} ({tested.errors} errors / {tested.total})")


def finish(path: Path, device: torch.device, train_batches: datasets.Batches,
           val_batches: datasets.Batches | None, test_batches: datasets.Batches
           ) -> tuple[dict, engine.Result]:
    """The kept checkpoint, with what makes its readings trustworthy (confidence.py: the
    temperature and the "no digit here" limits, fitted with the validation images, when there
    are enough) added to its file, or why there is none, and how it does on the test images."""
    kept = load_checkpoint(path)
    model = model_from_checkpoint(kept, device, path)
    if not val_batches:
        kept["uncalibrated"] = "no validation images"
    else:
        def split(batches):
            return (batches.images - batches.mean) / batches.std, batches.labels
        try:
            kept["calibration"] = confidence.fit(model, split(train_batches),
                                                 split(val_batches))
            kept.pop("uncalibrated", None)     # a file saved by an older version lacks it
        except confidence.CannotCalibrate as e:
            kept["uncalibrated"] = str(e)
    save_checkpoint(path, kept)
    return kept, engine.evaluate(model, test_batches)


def stopping_together(on_step, stop: cli.StopNote, device: torch.device):
    """``on_step``, and every STOP_CHECK_STEPS steps, stop every process if any of them noted
    a signal. (Asking at every step cost 7 % of the throughput of two CPU processes.)"""
    steps = itertools.count(1)

    def step(*args) -> None:
        on_step(*args)
        if next(steps) % STOP_CHECK_STEPS == 0:
            ddp.stop_together(stop, device)
    return step


if __name__ == "__main__":
    cli.run_script(main)
