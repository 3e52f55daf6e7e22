import csv
import importlib.util
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import datasets
import ddp
import engine
import test
import train
from conftest import ROOT, SMOKE, assert_one_line_error, next_line, run_main
from net import LeNet5


def read_history(save_dir):
    with open(save_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_smoke_run_writes_a_self_describing_checkpoint(trained):
    checkpoint = torch.load(trained / "best_model.pth", weights_only=True)
    assert set(checkpoint) >= {"model", "hparams", "epoch", "val_accuracy", "mean", "std",
                               "classes", "torch_version"}
    assert checkpoint["hparams"]["subset"] == 3000 and checkpoint["hparams"]["epochs"] == 2
    assert (checkpoint["mean"], checkpoint["std"]) == (0.1307, 0.3081)
    assert checkpoint["classes"] == [str(d) for d in range(10)]
    assert checkpoint["dataset"] == "mnist" and checkpoint["hparams"]["flip"] is False
    assert "calibration" in checkpoint and "uncalibrated" not in checkpoint
    rows = read_history(trained)
    assert [row["epoch"] for row in rows] == ["1", "2"]
    kept = rows[train.kept_epoch([row | {"epoch": int(row["epoch"]),
                                         "val_accuracy": float(row["val_accuracy"])}
                                  for row in rows], 250, train.KEEP_WITHIN) - 1]
    assert checkpoint["epoch"] == int(kept["epoch"])
    assert checkpoint["val_accuracy"] == pytest.approx(float(kept["val_accuracy"]), abs=1e-6)
    with Image.open(trained / "curves.png") as curves:
        assert curves.format == "PNG" and curves.width > 600


def test_log_has_one_aligned_line_per_epoch_and_the_test_result(smoke_run):
    out = smoke_run[1].stdout
    assert ("training LeNet-5 on 2,750 MNIST images and 275 drawn non-digits (validation 250) "
            "on cpu for 2 epochs") in out
    epoch_lines = [line for line in out.splitlines() if re.match(r"\s+\d+\s+\d", line)]
    assert len(epoch_lines) == 2
    assert len({len(line.removesuffix("  best")) for line in epoch_lines}) == 1      # aligned
    assert epoch_lines[0].endswith("  best")
    match = re.search(r"test accuracy (\d+\.\d\d)% \((\d+) errors / 10000\)", out)
    assert match, out
    accuracy, errors = float(match[1]), int(match[2])
    assert accuracy == pytest.approx(100 * (10000 - errors) / 10000, abs=0.005)
    assert accuracy > 80     # a real model after two small epochs, not a stub


def test_the_last_lines_say_which_epoch_was_kept_and_why():
    # As a run holds them: the history rounded to six places, the checkpoint's value exact.
    correct = [4950, 4970, 4966]
    history = [{"epoch": epoch, "val_accuracy": round(n / 4999, 6)}
               for epoch, n in enumerate(correct, 1)]
    tested = engine.Result(loss=0.02, correct=9945, total=10000)
    kept = {"epoch": 3, "val_accuracy": 4966 / 4999, "calibration": {"temperature": 0.5},
            "hparams": {"keep_within": 1.0}}
    saved = Path("runs") / "best_model.pth"
    assert train.summary(kept, history, tested, Path("runs")).splitlines() == [
        f"kept epoch 3 in {saved}",
        "its validation accuracy 99.34% is within a standard error of the best (99.42% at "
        "epoch 2)",
        "probabilities calibrated on the validation images: temperature 0.500",
        "test accuracy 99.45% (55 errors / 10000)"]
    assert train.summary(kept | {"hparams": {"keep_within": 2.5}}, history, tested,
                         Path("runs")).splitlines()[1] == (
        "its validation accuracy 99.34% is within 2.5 standard errors of the best (99.42% at "
        "epoch 2)")
    kept = {"epoch": 2, "val_accuracy": 4970 / 4999, "calibration": {"temperature": 0.5},
            "hparams": {"keep_within": 1.0}}
    assert train.summary(kept, history, tested, Path("runs")).splitlines()[1] == \
        "its validation accuracy 99.42% is the best"
    unvalidated = [row | {"val_accuracy": None} for row in history]
    lines = train.summary({"epoch": 3, "val_accuracy": None,
                           "uncalibrated": "no validation images"}, unvalidated, tested,
                          Path("runs")).splitlines()
    assert lines[0] == f"kept epoch 3, the last, in {saved}"
    assert lines[1].startswith("no validation images: probabilities are not calibrated")


@pytest.mark.parametrize("within, val_size, kept", [(0, 5000, 3), (1, 5000, 5), (2, 5000, 5),
                                                    (3, 5000, 6), (1, 250, 6)])
def test_the_kept_epoch_is_the_latest_that_validation_cannot_tell_from_the_best(
        within, val_size, kept):
    # One standard error of 99.40 % on 5,000 images is 0.109 points; on 250 images 0.488.
    accuracies = [0.9900, 0.9940, 0.9940, 0.9910, 0.9932, 0.9915]
    history = [{"epoch": epoch, "val_accuracy": accuracy}
               for epoch, accuracy in enumerate(accuracies, 1)]
    assert train.kept_epoch(history, val_size, within) == kept


def test_another_seed_trains_another_model(tmp_path):
    """Two runs alike but for the seed: different weights. (The same seed giving the same
    weights is proven by the resume tests, test_resume.py.)"""
    for seed in (0, 1):
        assert run_main(train, "--subset", "600", "--epochs", "1", "--seed", seed,
                        "--device", "cpu", "--save-dir", tmp_path / str(seed)).returncode == 0
    assert not torch.equal(weights(tmp_path / "0" / "last.pth")["net.0.weight"],
                           weights(tmp_path / "1" / "last.pth")["net.0.weight"])


def test_the_elastic_distortion_reaches_training_and_is_saved(tmp_path):
    for elastic in ("0", "10"):
        assert run_main(train, "--subset", "600", "--epochs", "1", "--elastic", elastic,
                        "--device", "cpu", "--save-dir", tmp_path / elastic).returncode == 0
    assert torch.load(tmp_path / "10" / "last.pth", weights_only=True)["hparams"]["elastic"] == 10
    assert not torch.equal(weights(tmp_path / "0" / "last.pth")["net.0.weight"],
                           weights(tmp_path / "10" / "last.pth")["net.0.weight"])


def test_drawn_non_digits_join_the_training_digits_only(tmp_path):
    """A tenth as many drawn non-digits as training digits, labelled as no class, in training
    only; none with --outliers 0 (nor for sets that are not digits: the other sets' runs)."""
    def training_labels(*flags):
        args = train.parse_args(["--subset", "1200", *flags])     # 1,100 + 100 validation
        batches = train.make_batches(args, torch.device("cpu"), torch.Generator(),
                                     ddp.World())
        return batches[0].labels, batches[1].labels
    labels, val = training_labels()
    assert int((labels == engine.NO_CLASS).sum()) == 110 and len(labels) == 1210
    assert (val != engine.NO_CLASS).all()
    assert (training_labels("--outliers", "0")[0] != engine.NO_CLASS).all()
    assert int((training_labels("--outliers", "0.5")[0] == engine.NO_CLASS).sum()) == 550
    assert run_main(train, "--subset", "600", "--epochs", "1", "--outliers", "0.25",
                    "--device", "cpu", "--save-dir", tmp_path).returncode == 0
    assert torch.load(tmp_path / "last.pth", weights_only=True)["hparams"]["outliers"] == 0.25


def test_teachers_change_the_training_and_are_saved_with_the_run(tmp_path, reader):
    """The same seed with and without a teacher: other weights, and the run names it."""
    flags = ("--subset", "600", "--epochs", "1", "--device", "cpu")
    assert run_main(train, *flags, "--save-dir", tmp_path / "alone").returncode == 0
    taught = run_main(train, *flags, "--teachers", reader, "--save-dir", tmp_path / "taught")
    assert taught.returncode == 0, taught.stderr
    assert "(validation 50) taught by 1 trained model on cpu" in taught.stdout
    hparams = torch.load(tmp_path / "taught" / "last.pth", weights_only=True)["hparams"]
    assert hparams["teachers"] == [str(reader)]
    assert (hparams["distill"], hparams["distill_temperature"]) == (train.DISTILL,
                                                                    train.DISTILL_TEMPERATURE)
    assert not torch.equal(weights(tmp_path / "alone" / "last.pth")["net.0.weight"],
                           weights(tmp_path / "taught" / "last.pth")["net.0.weight"])


def test_a_teacher_reads_the_pixels_as_it_was_trained_on_them(tmp_path, reader):
    """The tutorial's state_dict was trained on unnormalized pixels: as a teacher it gets them
    back from the run's normalized ones."""
    model = LeNet5()
    model.load_state_dict(torch.load(reader, weights_only=True)["model"])
    torch.save(model.state_dict(), tmp_path / "tutorial.pth")
    args = train.parse_args(["--teachers", str(tmp_path / "tutorial.pth"), str(reader),
                             "--subset", "600"])
    batches = train.make_batches(args, torch.device("cpu"), torch.Generator(), ddp.World())[0]
    teachers = train.load_teachers(args, torch.device("cpu"), batches)
    x = batches.images[:100]
    normalized = (x - batches.mean) / batches.std
    with torch.no_grad():
        tutorial = model.eval()(x).div(train.DISTILL_TEMPERATURE).softmax(1)
        shipped = teachers.models[1](normalized).div(train.DISTILL_TEMPERATURE).softmax(1)
    torch.testing.assert_close(teachers.probabilities(normalized), (tutorial + shipped) / 2,
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("teacher, message, code", [
    ("missing.pth", "no checkpoint at", 1),
    ("fashion.pth", "was trained on fashion-mnist, not mnist", 2),
    ("run/best_model.pth", "is where this run saves: copy it elsewhere", 2),
])
def test_a_teacher_that_cannot_teach_is_one_line(tmp_path, reader, teacher, message, code):
    """Missing, of another data set, or about to be overwritten by the run it teaches."""
    checkpoint = torch.load(reader, weights_only=True)
    torch.save(checkpoint | {"dataset": "fashion-mnist"}, tmp_path / "fashion.pth")
    (tmp_path / "run").mkdir()
    torch.save(checkpoint, tmp_path / "run" / "best_model.pth")
    result = run_main(train, "--subset", "600", "--epochs", "1", "--teachers",
                      tmp_path / teacher, "--save-dir", tmp_path / "run")
    assert_one_line_error(result, message, code=code)
    assert not (tmp_path / "run" / "last.pth").exists()
    assert torch.equal(weights(tmp_path / "run" / "best_model.pth")["net.0.weight"],
                       checkpoint["model"]["net.0.weight"])


def test_the_weight_average_is_what_is_validated_and_saved(trained, tmp_path):
    last = torch.load(trained / "last.pth", weights_only=True)
    assert last["hparams"]["ema_decay"] == train.EMA_DECAY > 0
    assert not torch.equal(last["model"]["net.0.weight"], last["train_weights"]["net.0.weight"])
    # The accuracy recorded with the best checkpoint is that of the weights it holds.
    best = torch.load(trained / "best_model.pth", weights_only=True)
    images, labels = datasets.load(ROOT / "data", "train")
    size = best["hparams"]["subset"]
    _, val_idx = datasets.train_val_split(size, datasets.scaled_val_size(train.VAL_SIZE, size), 0)
    from checkpoint import model_from_checkpoint
    model = model_from_checkpoint(best, torch.device("cpu"), "best_model.pth")
    val = engine.evaluate(model, datasets.Batches(images[val_idx], labels[val_idx], 500,
                                                  torch.device("cpu")))
    assert val.accuracy == pytest.approx(best["val_accuracy"], abs=1e-9)

    result = run_main(train, "--subset", "600", "--epochs", "1", "--ema-decay", "0",
                      "--save-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert torch.load(tmp_path / "last.pth", weights_only=True)["train_weights"] is None


def test_schedulers_are_really_stepped(tmp_path):
    result = run_main(train, "--subset", "600", "--epochs", "3", "--scheduler", "step",
                      "--step-size", "1", "--gamma", "0.5", "--optimizer", "sgd", "--lr", "0.01",
                      "--save-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert [float(r["lr"]) for r in read_history(tmp_path)] == pytest.approx([0.01, 0.005,
                                                                              0.0025])
    result = run_main(train, "--subset", "600", "--epochs", "3", "--save-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    lrs = [float(r["lr"]) for r in read_history(tmp_path)]
    assert lrs[0] < lrs[1] and lrs[2] < lrs[1]        # OneCycle warms up, then anneals


@pytest.mark.parametrize("every, drawn", [(1e9, [4]), (0, [1, 2, 3, 4])])
def test_curves_are_drawn_every_so_often_and_after_the_last_epoch(tmp_path, monkeypatch,
                                                                  every, drawn):
    """A drawing takes longer than a small epoch: before the last epoch, curves.png is drawn
    only once CURVES_EVERY seconds have passed since the start or the last drawing."""
    histories = []
    monkeypatch.setattr(train, "CURVES_EVERY", every)
    monkeypatch.setattr(train.plots, "training_curves",
                        lambda history, path, kept: histories.append(len(history)))
    result = run_main(train, "--subset", "300", "--epochs", "4", "--save-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert histories == drawn


def test_without_validation_split_the_last_epoch_is_kept(tmp_path):
    result = run_main(train, "--subset", "600", "--epochs", "2", "--val-size", "0",
                      "--save-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(validation 0)" in result.stdout
    kept = torch.load(tmp_path / "best_model.pth", weights_only=True)
    assert kept["epoch"] == 2 and "calibration" not in kept
    assert read_history(tmp_path)[0]["val_accuracy"] == ""
    assert "\nno validation images: probabilities are not calibrated" in result.stdout
    assert kept["uncalibrated"] == "no validation images"


def test_too_few_validation_images_calibrate_nothing_and_say_so(tmp_path):
    """50 held out (of --subset 600) cannot place the limit that refuses 1 % of the digits:
    no temperature, no refusals, and every reader of the checkpoint is told why."""
    result = run_main(train, "--subset", "600", "--epochs", "1", "--save-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    why = "only 50 validation images, and calibrating takes 100: hold out more with --val-size"
    assert f"\n{why} or a larger --subset: probabilities are not calibrated" in result.stdout
    kept = torch.load(tmp_path / "best_model.pth", weights_only=True)
    assert "calibration" not in kept and kept["uncalibrated"].startswith(why)
    tested = run_main(test, "--checkpoint", tmp_path / "best_model.pth", "--confusion",
                      tmp_path / "c.png")
    assert tested.returncode == 0 and f"holds no calibration ({why}" in tested.stderr


def test_help_shows_the_defaults_from_the_block_at_the_top():
    result = run_main(train, "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for flag, value in [("--epochs", train.EPOCHS), ("--batch-size", train.BATCH_SIZE),
                        ("--lr", train.LR), ("--optimizer", train.OPTIMIZER),
                        ("--weight-decay", train.WEIGHT_DECAY), ("--val-size", train.VAL_SIZE),
                        ("--scheduler", train.SCHEDULER), ("--augment", train.AUGMENT)]:
        assert flag in text and f"(default: {value})" in text, flag
    for flag in ["--momentum", "--step-size", "--gamma", "--seed", "--device", "--data-dir",
                 "--save-dir", "--subset", "--resume", "--no-augment", "--augment-strength",
                 "--amp", "--compile"]:
        assert flag in text
    # Parsing is pure: a second call in the same process shows exactly the same help.
    assert run_main(train, "--help").stdout == result.stdout
    assert text.count(f"(default: {train.EPOCHS})") == 1


def test_parse_args_fills_in_the_block_and_names_the_given_flags():
    args = train.parse_args(["--lr", "0.01", "--no-augment"])
    assert (args.lr, args.augment, args.epochs) == (0.01, False, train.EPOCHS)
    assert args.given == {"lr", "augment"}
    assert vars(train.parse_args([])) == vars(train.parse_args([]))


def test_a_run_that_diverges_stops_in_one_line_and_saves_no_nan(tmp_path):
    result = run_main(train, "--lr", "1e6", "--subset", "2000", "--epochs", "3",
                      "--save-dir", tmp_path)
    assert_one_line_error(result, "the loss became nan in epoch 1: training diverged",
                          "Lower the learning rate (--lr, 1e+06 in this run)")
    assert not any(tmp_path.glob("*.pth")) and "nan" not in result.stdout


def test_a_run_that_diverges_later_keeps_the_epoch_before(tmp_path, monkeypatch):
    """The diverged epoch reaches no file: best_model.pth, last.pth and the history stay at
    the epoch before, and the stop says so."""
    trained = engine.train_one_epoch

    epochs = []

    def diverging(*args, **kwargs):       # epoch 2 ends with an infinite loss
        fit = trained(*args, **kwargs)
        epochs.append(fit)
        return fit if len(epochs) == 1 else engine.Result(float("inf"), fit.correct, fit.total)
    monkeypatch.setattr(engine, "train_one_epoch", diverging)
    result = run_main(train, "--subset", "2000", "--epochs", "3", "--save-dir", tmp_path)
    assert_one_line_error(result, "the loss became inf in epoch 2",
                          f"; {tmp_path} keeps epoch 1")
    assert [row["epoch"] for row in read_history(tmp_path)] == ["1"]
    for name in ("best_model.pth", "last.pth"):
        assert torch.load(tmp_path / name, weights_only=True)["epoch"] == 1


def test_a_huge_loss_keeps_the_epoch_table_aligned():
    """A run on its way to diverging (--lr 1000 reaches losses of 1e18) stays in its columns."""
    rows = [dict(epoch=epoch, val_accuracy=0.5, lr=1e3) for epoch in (1, 2, 3)]
    losses = [(0.5, 0.6), (123.4567, 987.6543), (3.1e18, 2.5e17)]
    lines = [train.epoch_line(rows[:i + 1], engine.Result(fit, 50, 100),
                              engine.Result(val, 40, 100), 1.0, 100.0)
             for i, (fit, val) in enumerate(losses)]
    columns = [len(line.removesuffix("  best")) for line in lines]
    assert len(set(columns)) == 1, "\n".join(lines)
    assert lines[1].split()[1:4:2] == ["123.4567", "987.6543"]
    assert lines[2].split()[1:4:2] == ["3.10e+18", "2.50e+17"]


@pytest.mark.parametrize("args, message", [
    (["--lr", "0"], "argument --lr: must be > 0, got 0"),
    (["--lr", "fast"], "argument --lr: expected float, got 'fast'"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["--optimizer", "adam"], "argument --optimizer: invalid choice: 'adam'"),
    (["--momentum", "1"], "argument --momentum: must be >= 0 and < 1, got 1"),
    (["--lr", "nan"], "argument --lr: expected a finite number, got nan"),
    (["--weight-decay", "inf"], "argument --weight-decay: expected a finite number, got inf"),
    (["--val-size", "60000"], "argument --val-size: must be >= 0 and <= 59999"),
    (["--subset", "100", "--val-size", "59999"], "leaves no images to train on"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--augment-strength", "-1"], "argument --augment-strength: must be >= 0 and <= 2, got -1"),
])
def test_impossible_values_are_refused(tmp_path, args, message):
    result = run_main(train, *args, "--save-dir", tmp_path)
    assert_one_line_error(result, message, code=2)
    assert result.stderr.startswith("usage: ")       # argparse's own way
    assert not (tmp_path / "last.pth").exists()


@pytest.mark.parametrize("edit, message", [
    (("\nLR = ", "\nLR = -1 or "), "LR = -1 at the top of train.py: must be > 0"),
    (("\nOPTIMIZER = ", "\nOPTIMIZER = 'adam' or "),
     "OPTIMIZER = 'adam' at the top of train.py: choose from 'adamw', 'sgd'"),
    (("\nDATASET = ", "\nDATASET = 'cifar' or "),
     "DATASET = 'cifar' at the top of train.py: choose from 'mnist', 'fashion-mnist', 'kmnist'"),
    # Of the wrong type: each was taken as it was (a truthy "False", the letters of a name)
    (("\nAUGMENT = ", "\nAUGMENT = 'False' or "),
     "AUGMENT = 'False' at the top of train.py: expected True or False (without quotes)"),
    (("\nLR = ", "\nLR = '3e-3' or "), "LR = '3e-3' at the top of train.py: expected a number"),
    (("\nEPOCHS = ", "\nEPOCHS = 2.5 or "), "EPOCHS = 2.5 at the top of train.py: expected int"),
    (("\nTEACHERS = ", "\nTEACHERS = 'teacher.pth' or "),
     'TEACHERS = \'teacher.pth\' at the top of train.py: expected a list of files, such as '
     '["teacher.pth"]'),
    (("\nEMA_DECAY = ", "\nEMA_DECAY = None  # "), "EMA_DECAY = None at the top of train.py"),
    (("\nDEVICE = ", "\nDEVICE = 'gpu' or "), "DEVICE = 'gpu' at the top of train.py: choose"),
])
def test_values_edited_into_the_block_are_checked_too(tmp_path, edit, message):
    edited = tmp_path / "train.py"
    edited.write_text((ROOT / "train.py").read_text().replace(*edit))
    spec = importlib.util.spec_from_file_location("edited_train", edited)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = run_main(module, "--subset", "100", "--save-dir", tmp_path)
    assert_one_line_error(result, message, code=2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_one_line(tmp_path):
    assert_one_line_error(run_main(train, "--device", "cuda", "--save-dir", tmp_path),
                          "'cuda' is not available")


def test_save_dir_that_is_a_file_stops_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_main(train, "--subset", "600", "--save-dir", blocker)
    assert_one_line_error(result, "cannot write to the save folder", str(blocker))
    assert "epoch" not in result.stdout


def test_damaged_data_is_reported_before_training(tmp_path, data_copy):
    archive = data_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:100])
    result = run_main(train, "--subset", "600", "--data-dir", data_copy,
                      "--save-dir", tmp_path / "out")
    assert_one_line_error(result, "t10k-labels-idx1-ubyte.gz is damaged", "git checkout")
    assert not (tmp_path / "out" / "last.pth").exists() and "epoch" not in result.stdout


def test_main_puts_the_signal_handlers_back(tmp_path):
    before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    assert run_main(train, "--subset", "100", "--epochs", "1", "--val-size", "0",
                    "--save-dir", tmp_path).returncode == 0
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == before


def check_speed_option(save_dir, result, flag):
    assert result.returncode == 0, result.stderr
    accuracy = float(re.search(r"test accuracy (\d+\.\d\d)%", result.stdout)[1])
    assert accuracy > 80, result.stdout
    checkpoint = torch.load(save_dir / "best_model.pth", weights_only=True)
    assert set(checkpoint["model"]) == set(weights(save_dir / "last.pth"))
    assert checkpoint["hparams"][flag[2:]] is True
    assert not any(k.startswith("_orig_mod") for k in checkpoint["model"])


def test_amp_trains_a_real_model_on_cpu(tmp_path):
    result = run_main(train, *SMOKE, "--amp", "--save-dir", tmp_path)
    check_speed_option(tmp_path, result, "--amp")


@pytest.mark.processes
@pytest.mark.slow
def test_compile_trains_a_real_model_on_cpu(tmp_path):
    # 2,560 images in batches of 64 without validation: one batch shape, so one compilation
    result = run_main(train, "--subset", "2560", "--val-size", "0", "--epochs", "2",
                      "--compile", "--save-dir", tmp_path)
    check_speed_option(tmp_path, result, "--compile")


@pytest.mark.parametrize("name, flip, strength",
                         [("fashion-mnist", True, 0.0), ("kmnist", False, 1.0)])
def test_another_data_set_trains_with_its_own_constants_names_and_augmentation(
        small_runs, small_sets, tmp_path, name, flip, strength):
    spec = datasets.DATASETS[name]
    save_dir, result = small_runs[name]
    assert f"training LeNet-5 on 250 {spec.title} images (validation 50)" in result.stdout
    accuracy = float(re.search(r"test accuracy (\d+\.\d\d)%", result.stdout)[1])
    assert accuracy > 50                 # ten classes: a model that learned the bars
    best = torch.load(save_dir / "best_model.pth", weights_only=True)
    assert best["dataset"] == name and best["classes"] == list(spec.classes)
    images, _ = datasets.load(small_sets, "train", name)
    assert (best["mean"], best["std"]) == datasets.normalization(images)
    assert (best["mean"], best["std"]) != (datasets.MEAN, datasets.STD)
    assert (best["hparams"]["flip"], best["hparams"]["augment_strength"]) == (flip, strength)
    # The block's None defaults are the set's, and flags override them.
    args = train.parse_args(["--dataset", name, "--augment-strength", "0.25", "--no-flip"])
    assert (args.augment_strength, args.flip) == (0.25, False)

    for output in ("last.pth", "best_model.pth", "history.csv"):
        (tmp_path / output).write_bytes((save_dir / output).read_bytes())
    assert_one_line_error(run_main(train, "--resume", "--dataset", "mnist",
                                   "--save-dir", tmp_path),
                          f"--dataset mnist conflicts with the run being resumed ({name})",
                          code=2)
    resumed = run_main(train, "--resume", "--epochs", "4", "--data-dir", small_sets,
                       "--save-dir", tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert spec.title in resumed.stdout


@pytest.mark.processes
def test_a_second_run_on_the_same_save_dir_is_refused_and_a_killed_one_leaves_no_lock(tmp_path):
    """Two runs in one folder would delete each other's half-written files; the second is
    refused in one line. The lock goes with its process: after kill -9 a new run starts."""
    first = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *SMOKE, "--epochs", "50",
                              "--save-dir", tmp_path, "--device", "cpu"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert next_line(first.stdout).startswith("training LeNet-5")     # the lock is held
        second = run_main(train, *SMOKE, "--save-dir", tmp_path, "--device", "cpu")
        assert_one_line_error(second, f"another train.py is writing to {tmp_path}",
                              "--save-dir")
    finally:
        first.kill()
        first.communicate()
    third = run_main(train, *SMOKE, "--epochs", "1", "--save-dir", tmp_path, "--device", "cpu")
    assert third.returncode == 0, third.stderr


@pytest.mark.processes
def test_the_block_is_the_one_place_of_each_default_and_its_help(tmp_path):
    """Editing a line of the block changes both the default and the help that --help shows."""
    import os
    source = (ROOT / "train.py").read_text()
    edited = re.sub(r"(?m)^EPOCHS = \d+ .*$", "EPOCHS = 7               # laps of the data", source)
    assert edited != source
    (tmp_path / "train.py").write_text(edited)
    result = subprocess.run([sys.executable, str(tmp_path / "train.py"), "--help"],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert "laps of the data (default: 7)" in " ".join(result.stdout.split())
