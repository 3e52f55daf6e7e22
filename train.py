"""Train LeNet-5 on MNIST and keep the checkpoint with the best validation accuracy.

    python train.py                      # the recipe in the block below
    python train.py --epochs 5 --lr 1e-3 # any setting can be overridden by a flag
    python train.py --resume             # continue save_model/last.pth after a stop
"""
import os
import signal
import sys


def _stop_while_starting(signum, frame):
    print(f"stopped by {signal.Signals(signum).name} while starting; nothing was saved",
          file=sys.stderr)
    os._exit(128 + signum)


# Importing torch takes seconds: a stop during it should be as quiet as one during training.
signal.signal(signal.SIGINT, _stop_while_starting)
signal.signal(signal.SIGTERM, _stop_while_starting)

import argparse  # noqa: E402 (the handlers above must come first)
import csv  # noqa: E402
import io  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import engine  # noqa: E402
import mnist  # noqa: E402
import plots  # noqa: E402
from engine import ranged  # noqa: E402

# ---- Hyperparameters: edit them here, or override one with its flag (python train.py --help) ----
EPOCHS = 50              # passes over the training images
BATCH_SIZE = 64          # images per optimizer step
OPTIMIZER = "adamw"      # "adamw" or "sgd"
LR = 3e-3                # learning rate; the peak rate when SCHEDULER is "onecycle"
MOMENTUM = 0.9           # SGD momentum (AdamW keeps its own betas)
WEIGHT_DECAY = 1e-2      # decoupled for AdamW, an L2 penalty for SGD
SCHEDULER = "onecycle"   # "onecycle" (stepped every batch), "step" (every epoch) or "none"
STEP_SIZE = 10           # "step": epochs between learning-rate drops
GAMMA = 0.1              # "step": factor of each drop
AUGMENT = True           # random rotation, scale, shear and shift of each training image
AUGMENT_STRENGTH = 1.0   # 1: up to 15 deg, 15 %, 10 deg shear, 3 px; 0.5 halves every range
LABEL_SMOOTHING = 0.1    # share of each target spread over the other classes in the loss
EMA_DECAY = 0.999        # the weights validated and saved are this moving average (0: off)
VAL_SIZE = 5000          # images held out of the 60,000 to pick the best epoch (0: keep the last)
SEED = 0                 # fixes initialization, split, order and augmentation
AMP = False              # bfloat16 autocast, meant for GPUs (several times slower on our CPU)
COMPILE = False          # torch.compile: ~30 s to compile on 2 CPU cores, no clear gain there
DEVICE = "auto"          # "auto" (CUDA, then Apple MPS, then CPU), "cpu", "cuda" or "mps"
DATA_DIR = "data"        # holds MNIST/raw/
SAVE_DIR = "save_model"  # best_model.pth, last.pth, history.csv, curves.png
# ---------------------------------------------------------------------------------------------

OUTPUTS = ["best_model.pth", "last.pth", "history.csv", "curves.png"]
HISTORY_FIELDS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]


# flag → (default from the block above, argparse options); these make a run's hyperparameters.
HYPERPARAMETERS = {
    "epochs": (EPOCHS, dict(type=ranged(int, 1), help="passes over the training images")),
    "batch_size": (BATCH_SIZE, dict(type=ranged(int, 1), help="images per optimizer step")),
    "optimizer": (OPTIMIZER, dict(choices=["adamw", "sgd"], help="optimizer")),
    "lr": (LR, dict(type=ranged(float, 0, low_open=True), help="(peak) learning rate")),
    "momentum": (MOMENTUM, dict(type=ranged(float, 0, 1, high_open=True), help="SGD momentum")),
    "weight_decay": (WEIGHT_DECAY, dict(type=ranged(float, 0), help="weight decay")),
    "scheduler": (SCHEDULER, dict(choices=["onecycle", "step", "none"],
                                  help="learning-rate schedule")),
    "step_size": (STEP_SIZE, dict(type=ranged(int, 1), help="StepLR: epochs between drops")),
    "gamma": (GAMMA, dict(type=ranged(float, 0, 1, low_open=True), help="StepLR: drop factor")),
    "augment": (AUGMENT, dict(action=argparse.BooleanOptionalAction,
                              help="random affine augmentation of training images")),
    "augment_strength": (AUGMENT_STRENGTH, dict(type=ranged(float, 0, 2, low_open=True),
                                                help="scale of the augmentation's ranges")),
    "label_smoothing": (LABEL_SMOOTHING, dict(type=ranged(float, 0, 1, high_open=True),
                                              help="label smoothing of the training loss")),
    "ema_decay": (EMA_DECAY, dict(type=ranged(float, 0, 1, high_open=True),
                                  help="decay of the weight average that is validated and saved "
                                       "(0: the trained weights themselves)")),
    "val_size": (VAL_SIZE, dict(type=ranged(int, 0, mnist.TRAIN_SIZE - 1),
                                help="training images held out for validation")),
    "seed": (SEED, dict(type=ranged(int, 0), help="random seed")),
    "amp": (AMP, dict(action=argparse.BooleanOptionalAction, help="bfloat16 autocast")),
    "compile": (COMPILE, dict(action=argparse.BooleanOptionalAction,
                              help="torch.compile the model")),
    "subset": (None, dict(type=ranged(int, 1, mnist.TRAIN_SIZE), metavar="N",
                          help="train on the first N training images only (smoke runs); "
                               "the validation split shrinks in proportion")),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train LeNet-5 on MNIST.")
    for name, (default, options) in HYPERPARAMETERS.items():
        flag = "--" + name.replace("_", "-")
        help_text = options.pop("help") + ("" if default is None else f" (default: {default})")
        # None marks "not given", which --resume needs to tell conflicting flags apart
        parser.add_argument(flag, default=None, help=help_text, **options)
        options["help"] = help_text
    parser.add_argument("--device", default=DEVICE, choices=engine.DEVICES,
                        help=f"where to train (default: {DEVICE})")
    parser.add_argument("--data-dir", default=DATA_DIR, help=f"MNIST folder (default: {DATA_DIR})")
    parser.add_argument("--save-dir", default=SAVE_DIR,
                        help=f"output folder (default: {SAVE_DIR})")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run saved in SAVE_DIR/last.pth with its settings")
    args = parser.parse_args(argv)
    args.given = {name for name in HYPERPARAMETERS if getattr(args, name) is not None}
    for name, (default, options) in HYPERPARAMETERS.items():
        if getattr(args, name) is None and default is not None and "type" in options:
            try:  # a value edited into the block gets the same checks as a flag
                options["type"](default)
            except argparse.ArgumentTypeError as e:
                parser.error(f"{name.upper()} = {default!r} at the top of train.py: {e}")
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.parser = parser
    return args


class Interrupted(Exception):
    """Raised by SIGINT or SIGTERM so that a stop unwinds like any error, between two steps."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.saved = "no epoch of this run had finished, so nothing was saved"


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def prepare_save_dir(path: str) -> Path:
    """Create the output folder and prove it is writable before any training starts."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".write-test").touch()
        (folder / ".write-test").unlink()
    except OSError as e:
        raise engine.CheckpointError(f"cannot write to the save folder {folder} "
                                     f"({e.strerror or e}): pass a writable --save-dir") from None
    for name in OUTPUTS:   # temporary files a kill -9 left behind mid-write
        for leftover in folder.glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)
    return folder


def resume_state(args: argparse.Namespace, device: torch.device) -> dict:
    """Read last.pth and make ``args`` the saved run's hyperparameters (checking conflicts)."""
    state = engine.load_checkpoint(Path(args.save_dir) / "last.pth")
    if "optimizer" not in state:
        raise engine.CheckpointError(f"{args.save_dir}/last.pth holds no training state to "
                                     f"resume (only weights)")
    if state["device"] != device.type:
        args.parser.error(f"the run was trained on {state['device']}; resume it there "
                          f"with --device {state['device']}")
    # Runs saved before these settings existed trained without them.
    saved = {"label_smoothing": 0.0, "ema_decay": 0.0} | state["hparams"]
    for name in sorted(args.given - {"epochs"}):
        if getattr(args, name) != saved[name]:
            args.parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} conflicts with "
                              f"the run being resumed ({saved[name]}); drop it, or start a new "
                              f"run without --resume")
    done, planned = state["epoch"], saved["epochs"]
    epochs = args.epochs if "epochs" in args.given else planned
    if done < planned and epochs != planned:
        args.parser.error(f"the run stopped at epoch {done} of {planned}; resume it without "
                          f"--epochs, then extend it with --resume --epochs N")
    if done == planned and epochs <= done:
        args.parser.error(f"the run in {args.save_dir}/last.pth finished all {done} epochs: "
                          f"pass --epochs N with N > {done} to train it further")
    for name in HYPERPARAMETERS:
        setattr(args, name, saved[name])
    args.epochs = epochs
    return state


def make_scheduler(optimizer, args, epochs: int, steps_per_epoch: int):
    """The schedule, and whether it is stepped per batch (OneCycle) or per epoch (StepLR)."""
    if args.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=args.lr, epochs=epochs, steps_per_epoch=steps_per_epoch), True
    if args.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=args.step_size, gamma=args.gamma), False
    return None, False


def write_history(path: Path, history: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    engine.write_atomic(path, lambda f: f.write(text.getvalue().encode()))


def fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def main(argv=None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        train(args)
    except Interrupted as stop:
        print(f"\nstopped by {stop}: {stop.saved}", file=sys.stderr)
        sys.exit(128 + stop.signum)


def train(args: argparse.Namespace) -> None:
    device = engine.pick_device(args.device)
    save_dir = prepare_save_dir(args.save_dir)
    state = resume_state(args, device) if args.resume else None

    # Data: both splits are read and verified before any training starts.
    images, labels = mnist.load(args.data_dir, "train")
    test_images, test_labels = mnist.load(args.data_dir, "test")
    val_size = args.val_size
    if args.subset is not None:
        images, labels = images[:args.subset], labels[:args.subset]
        val_size = mnist.scaled_val_size(val_size, args.subset)
    if val_size >= len(labels):
        args.parser.error(f"--val-size {val_size} leaves no images to train on")
    train_idx, val_idx = mnist.train_val_split(len(labels), val_size, args.seed)
    generator = torch.Generator(device).manual_seed(args.seed)
    train_batches = mnist.Batches(images[train_idx], labels[train_idx], args.batch_size, device,
                                  shuffle=True, generator=generator,
                                  augment=args.augment_strength if args.augment else 0.0)
    val_batches = (mnist.Batches(images[val_idx], labels[val_idx], engine.EVAL_BATCH_SIZE,
                                 device) if val_size else None)

    torch.manual_seed(args.seed)
    model = engine.new_model(device)
    ema = engine.EMA(model, args.ema_decay) if args.ema_decay else None
    judged = ema.model if ema else model    # the weights validated, saved and tested
    optimizer = engine.new_optimizer(model, args.optimizer, args.lr, args.momentum,
                                     args.weight_decay)
    step_model = torch.compile(model) if args.compile else model    # shares model's weights
    first_epoch, best_val, history = 1, -1.0, []
    hparams = {name: getattr(args, name) for name in HYPERPARAMETERS}
    if state is None:
        scheduler, per_batch = make_scheduler(optimizer, args, args.epochs, len(train_batches))
    else:
        model.load_state_dict(state["model"] if ema is None else state["train_weights"])
        if ema is not None:
            ema.model.load_state_dict(state["model"])
            ema.updates = state["ema_updates"]
        done = state["epoch"]
        if done == state["hparams"]["epochs"] and args.scheduler == "onecycle":
            # A finished OneCycle run gets a new cycle of its own over the added epochs.
            optimizer.load_state_dict(state["optimizer"])
            scheduler, per_batch = make_scheduler(optimizer, args, args.epochs - done,
                                                  len(train_batches))
        else:
            # Schedulers set the learning rate when created: restore the optimizer after that.
            scheduler, per_batch = make_scheduler(optimizer, args, args.epochs,
                                                  len(train_batches))
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        generator.set_state(state["rng"]["data"])
        first_epoch, best_val, history = done + 1, state["best_val_accuracy"], state["history"]
        write_history(save_dir / "history.csv", history)
        print(f"resuming {save_dir}/last.pth after epoch {done} of {args.epochs}")

    print(f"training LeNet-5 on {len(train_idx):,} images (validation {len(val_idx):,}) "
          f"on {device.type} for {args.epochs} epochs")
    print(f"{'epoch':>5} {'train loss':>10} {'train acc':>9} {'val loss':>8} {'val acc':>8} "
          f"{'lr':>8} {'time':>6} {'img/s':>7}")
    last_done = first_epoch - 1
    try:
        for epoch in range(first_epoch, args.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]
            start = time.perf_counter()
            with tqdm(total=len(train_batches), desc=f"epoch {epoch}/{args.epochs}",
                      unit="batch", leave=False, disable=None) as bar:
                def on_step(n, loss_sum, correct, seen):
                    bar.update(1)
                    if not bar.disable and bar.n % 25 == 0:   # reading the device costs a sync
                        bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}",
                                        acc=f"{correct.item() / seen:.2%}")
                train = engine.train_one_epoch(step_model, train_batches, optimizer,
                                               scheduler if per_batch else None, on_step,
                                               amp=args.amp, cuda_graph=not args.compile,
                                               label_smoothing=args.label_smoothing, ema=ema)
            train_seconds = time.perf_counter() - start
            if scheduler is not None and not per_batch:
                scheduler.step()
            val = engine.evaluate(judged, val_batches, amp=args.amp) if val_batches else None
            seconds = time.perf_counter() - start

            improved = (val.accuracy > best_val) if val else epoch == args.epochs
            checkpoint = {
                "format": engine.CHECKPOINT_FORMAT, "model": judged.state_dict(),
                "hparams": hparams | {"epochs": args.epochs}, "epoch": epoch,
                "val_accuracy": val.accuracy if val else None,
                "mean": mnist.MEAN, "std": mnist.STD, "classes": mnist.CLASSES,
                "torch_version": str(torch.__version__),
            }
            if improved:
                best_val = val.accuracy if val else best_val
                engine.save_checkpoint(save_dir / "best_model.pth", checkpoint)
            history.append({
                "epoch": epoch, "train_loss": round(train.loss, 6),
                "train_accuracy": round(train.accuracy, 6),
                "val_loss": round(val.loss, 6) if val else None,
                "val_accuracy": round(val.accuracy, 6) if val else None, "lr": lr,
            })
            write_history(save_dir / "history.csv", history)
            plots.training_curves(history, save_dir / "curves.png")
            engine.save_checkpoint(save_dir / "last.pth", checkpoint | {
                "train_weights": model.state_dict() if ema else None,
                "ema_updates": ema.updates if ema else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler else None,
                "rng": {"torch": torch.get_rng_state(), "data": generator.get_state()},
                "history": history, "best_val_accuracy": best_val, "device": device.type,
            })
            last_done = epoch
            print(f"{epoch:>5} {train.loss:>10.4f} {train.accuracy:>9.2%} "
                  f"{fmt(val and val.loss, '.4f'):>8} {fmt(val and val.accuracy, '.2%'):>8} "
                  f"{lr:>8.2e} {seconds:>5.1f}s {train.total / train_seconds:>7,.0f}"
                  f"{'  best' if improved else ''}", flush=True)
    except Interrupted as stop:
        if last_done:
            stop.saved = (f"{save_dir}/last.pth holds epoch {last_done} of {args.epochs}; "
                          f"continue with: python train.py --resume"
                          + (f" --save-dir {save_dir}" if args.save_dir != SAVE_DIR else ""))
        raise

    try:
        best = engine.load_checkpoint(save_dir / "best_model.pth")
        model = engine.model_from_checkpoint(best, device, save_dir / "best_model.pth")
        test = engine.evaluate(model, mnist.Batches(test_images, test_labels,
                                                    engine.EVAL_BATCH_SIZE, device))
    except Interrupted as stop:
        stop.saved = (f"training had finished; {save_dir}/best_model.pth is complete "
                      f"(python test.py evaluates it)")
        raise
    print(f"best epoch {best['epoch']} saved to {save_dir}/best_model.pth")
    print(f"test accuracy {test.accuracy:.2%} ({test.errors} errors / {test.total})")


if __name__ == "__main__":
    engine.run_script(main, (mnist.DataError, engine.CheckpointError, engine.DeviceError))
