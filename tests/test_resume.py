"""Stops of every kind lose no finished work, and a resumed run equals an uninterrupted one."""
import csv
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import datasets
import train
from conftest import (ROOT, assert_one_line_error, next_line, run_main,
                      wait_until_stops_are_handled)

# Slow enough per epoch (about a second) to be stopped in the middle of one.
RUN = ["--subset", "8000", "--epochs", "2", "--batch-size", "32", "--device", "cpu"]


def start(save_dir, *extra):
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *RUN, *map(str, extra),
                             "--save-dir", str(save_dir)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(path, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def saved_epoch(path):
    return torch.load(path, weights_only=True)["epoch"]


def assert_same_weights(a, b):
    """The same saved weights: the averaged ones, and the trained ones where last.pth has them."""
    ca, cb = (torch.load(p, weights_only=True) for p in (a, b))
    for name in ("model", "train_weights"):
        wa, wb = ca.get(name), cb.get(name)
        assert (wa is None) == (wb is None), name
        assert wa is None or wa.keys() == wb.keys()
        for key in wa or {}:
            assert torch.equal(wa[key], wb[key]), (name, key)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("uninterrupted")
    result = run_main(train, *RUN, "--save-dir", save_dir)
    assert result.returncode == 0, result.stderr
    return save_dir


@pytest.mark.processes
def test_ctrl_c_stops_fast_and_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    process = start(tmp_path)
    wait_for(tmp_path / "last.pth", process)          # epoch 1 is done; stop during epoch 2
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert time.monotonic() - sent < 3, "a stop should take about a second"
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert "stopped by SIGINT: " in err and "holds epoch 1 of 2" in err
    assert "python train.py --resume" in err
    assert saved_epoch(tmp_path / "last.pth") == 1

    result = run_main(train, "--resume", "--save-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout and "test accuracy" in result.stdout
    assert_same_weights(tmp_path / "last.pth", uninterrupted / "last.pth")
    assert_same_weights(tmp_path / "best_model.pth", uninterrupted / "best_model.pth")
    assert (tmp_path / "history.csv").read_text() == \
        (uninterrupted / "history.csv").read_text()


@pytest.mark.processes
def test_sigterm_exits_143_and_keeps_the_finished_epoch(tmp_path):
    process = start(tmp_path)
    wait_for(tmp_path / "last.pth", process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143 and "stopped by SIGTERM: " in err, err
    assert "Traceback" not in err and "python train.py --resume" in err
    assert saved_epoch(tmp_path / "last.pth") == 1


@pytest.mark.processes
@pytest.mark.parametrize("when", ["starting", "training"])
def test_stop_before_the_first_epoch_ends_says_nothing_was_saved(tmp_path, when):
    """While torch loads, or once the first epoch has begun."""
    process = start(tmp_path)
    wait_until_stops_are_handled(process)
    if when == "training":
        assert next_line(process.stdout).startswith("training LeNet-5")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "nothing was saved" in err
    assert not (tmp_path / "last.pth").exists()


@pytest.mark.processes
def test_kill_9_leaves_whole_checkpoints_that_resume(tmp_path):
    process = start(tmp_path)
    wait_for(tmp_path / "last.pth", process)
    time.sleep(0.2)                                       # in epoch 2, or writing epoch 1
    process.kill()
    process.wait()
    for name in ("last.pth", "best_model.pth"):
        torch.load(tmp_path / name, weights_only=True)   # whole, never truncated
    (tmp_path / ".last.pth.left-by-a-kill.tmp").write_bytes(b"half a checkpoint")
    result = run_main(train, "--resume", "--save-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert saved_epoch(tmp_path / "last.pth") == 2
    assert not list(tmp_path.glob(".*.tmp"))              # leftovers are cleared


@pytest.mark.processes
def test_kill_9_in_the_middle_of_a_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "best_model.pth"
    target.write_bytes(b"old complete version")
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from atomic import write_atomic
        def half_then_die(f):
            f.write(b"half of the new ver")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        write_atomic({str(target)!r}, half_then_die)
    """)
    result = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert result.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old complete version"


def test_resume_refuses_conflicting_flags_and_extends_with_epochs(tmp_path, uninterrupted):
    for name in ("last.pth", "best_model.pth", "history.csv"):
        (tmp_path / name).write_bytes((uninterrupted / name).read_bytes())
    assert_one_line_error(run_main(train, "--resume", "--lr", "0.1", "--save-dir", tmp_path),
                          "--lr 0.1 conflicts with the run being resumed (0.003)", code=2)
    assert_one_line_error(run_main(train, "--resume", "--save-dir", tmp_path),
                          "finished all 2 epochs", "--epochs N", code=2)
    result = run_main(train, "--resume", "--epochs", "3", "--batch-size", "32",
                      "--save-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    history = (tmp_path / "history.csv").read_text().splitlines()
    assert history[:3] == (uninterrupted / "history.csv").read_text().splitlines()
    assert len(history) == 4
    # The kept epoch is chosen over all three epochs, the added one included.
    kept = torch.load(tmp_path / "best_model.pth", weights_only=True)
    rows = [{"epoch": int(row["epoch"]), "val_accuracy": float(row["val_accuracy"])}
            for row in csv.DictReader(history)]
    hparams = kept["hparams"]
    val_size = datasets.scaled_val_size(hparams["val_size"], hparams["subset"])
    assert kept["epoch"] == train.kept_epoch(rows, val_size, hparams["keep_within"])
    assert kept["val_accuracy"] == pytest.approx(rows[kept["epoch"] - 1]["val_accuracy"])
    assert saved_epoch(tmp_path / "last.pth") == 3


def test_a_run_saved_before_later_settings_existed_resumes_without_them(tmp_path):
    """Smoothing, the weight average, data sets and flips came later: an older last.pth
    lacks them and trained MNIST without them."""
    assert run_main(train, "--subset", "600", "--epochs", "1", "--label-smoothing", "0",
                    "--ema-decay", "0", "--keep-within", "0", "--elastic", "0", "--outliers",
                    "0", "--save-dir", tmp_path).returncode == 0
    path = tmp_path / "last.pth"
    state = torch.load(path, weights_only=True)
    later = ("label_smoothing", "ema_decay", "dataset", "flip", "keep_within", "elastic",
             "outliers", "teachers", "distill", "distill_temperature")
    for name in later:
        del state["hparams"][name]
    del state["train_weights"], state["ema_updates"], state["dataset"]
    torch.save(state, path)
    result = run_main(train, "--resume", "--epochs", "2", "--save-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "drawn non-digits" not in result.stdout
    resumed = torch.load(path, weights_only=True)
    assert [resumed["hparams"][name] for name in (*later, "epochs")] == [
        0.0, 0.0, "mnist", False, 0.0, 0.0, 0.0, None, train.DISTILL,
        train.DISTILL_TEMPERATURE, 2]
    assert resumed["dataset"] == "mnist"


def test_resume_without_a_saved_run_says_so_and_leaves_no_folder(tmp_path):
    assert_one_line_error(run_main(train, "--resume", "--save-dir", tmp_path),
                          f"nothing to resume: {tmp_path} holds no last.pth. Pass the "
                          f"--save-dir of the run to continue")
    assert list(tmp_path.iterdir()) == []
    mistyped = tmp_path / "runs" / "lr-1e3"
    assert_one_line_error(run_main(train, "--resume", "--save-dir", mistyped),
                          "nothing to resume")
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_stops_before_writing_leaves_no_folder(tmp_path, monkeypatch):
    """A start that fails (here on missing data) leaves no empty save folder behind; a folder
    that was there stays, with its files."""
    def offline(root, train, download):
        raise RuntimeError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr("torchvision.datasets.MNIST", offline)
    result = run_main(train, "--subset", "500", "--epochs", "1", "--data-dir",
                      tmp_path / "no-data", "--save-dir", tmp_path / "run")
    assert result.returncode == 1
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()     # a folder that was there before stays, and its files
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    result = run_main(train, "--subset", "500", "--epochs", "1", "--data-dir",
                      tmp_path / "no-data", "--save-dir", tmp_path / "mine")
    assert result.returncode == 1
    assert "notes.txt" in [file.name for file in (tmp_path / "mine").iterdir()]


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, trained):
    # The data were extracted by the run behind ``trained``: extraction cannot hit the limit.
    before = (trained / "best_model.pth").read_bytes()
    (tmp_path / "best_model.pth").write_bytes(before)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Files may not grow past 100 kB (a checkpoint needs about 250 kB); Python ignores the
    # SIGXFSZ this would send, so a write fails with "File too large" instead.
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, limits[1]))
    try:
        result = run_main(train, "--subset", "600", "--epochs", "1", "--seed", "5",
                          "--save-dir", tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    assert_one_line_error(result, "could not write", "File too large", "previous version")
    assert (tmp_path / "best_model.pth").read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_resume_refuses_what_it_cannot_continue(tmp_path, uninterrupted):
    """A file of weights alone, a run of another device, --epochs on an unfinished run: one
    line each, saying what to do."""
    last = torch.load(uninterrupted / "last.pth", weights_only=True)
    weights_only = {k: v for k, v in last.items()
                    if k not in ("optimizer", "scheduler", "rng", "train_weights")}
    (tmp_path / "weights").mkdir()
    torch.save(weights_only, tmp_path / "weights" / "last.pth")
    assert_one_line_error(run_main(train, "--resume", "--save-dir", tmp_path / "weights"),
                          "holds no training state to resume")

    (tmp_path / "gpu").mkdir()
    torch.save(last | {"device": "cuda"}, tmp_path / "gpu" / "last.pth")
    assert_one_line_error(run_main(train, "--resume", "--save-dir", tmp_path / "gpu",
                                   "--device", "cpu"),
                          "the run was trained on cuda; resume it there with --device cuda",
                          code=2)

    (tmp_path / "unfinished").mkdir()
    torch.save(last | {"epoch": 1}, tmp_path / "unfinished" / "last.pth")
    assert_one_line_error(run_main(train, "--resume", "--epochs", "5", "--save-dir",
                                   tmp_path / "unfinished"),
                          "stopped at epoch 1 of 2", "resume it without --epochs", code=2)


@pytest.mark.parametrize("saved_by, resumes", [("this run", True), ("an earlier run", False)])
def test_a_restart_by_torchrun_continues_its_own_run_only(tmp_path, monkeypatch, uninterrupted,
                                                          saved_by, resumes):
    """torchrun restarts the processes after a failure, giving them the run's id: the restarted
    run continues last.pth when that file is its own, and starts over beside another run's."""
    import ddp
    last = torch.load(uninterrupted / "last.pth", weights_only=True)
    torch.save(last | {"run_id": saved_by}, tmp_path / "last.pth")
    shutil.copy(uninterrupted / "best_model.pth", tmp_path)
    restarted = ddp.World(restarts=1, run_id="this run")
    monkeypatch.setattr(ddp, "start", lambda device: (restarted, torch.device("cpu")))
    result = run_main(train, *RUN, "--save-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert ("resuming" in result.stdout) == resumes, result.stdout
    epochs_trained = [line.split()[0] for line in result.stdout.splitlines()
                      if line.split() and line.split()[0].isdigit()]
    assert epochs_trained == ([] if resumes else ["1", "2"]), result.stdout
    assert_same_weights(tmp_path / "last.pth", uninterrupted / "last.pth")
