"""study.py: a recipe over seeds, its table, a stop and --resume, and a comparison; every run a
real train.py process on a small subset."""
import csv
import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import study
import test
from conftest import ROOT, assert_one_line_error, run_main, wait_until_stops_are_handled

# Seconds a run: 1,000 images (100 held out), 2 epochs.
TINY = ["--subset", "1000", "--epochs", "2", "--batch-size", "50", "--device", "cpu"]


def table_rows(folder):
    with open(folder / study.TABLE, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study") / "tiny"
    result = run_main(study, "--seeds", "2", *TINY, "--save-dir", folder)
    assert result.returncode == 0, result.stderr
    return folder, result


@pytest.mark.processes
def test_a_study_trains_each_seed_and_reports_mean_and_spread(two_seeds):
    folder, result = two_seeds
    rows = table_rows(folder)
    assert [row["seed"] for row in rows] == ["0", "1"]
    for row in rows:          # the figures are the run's own, as test.py reads them
        run = folder / f"seed-{row['seed']}"
        reported = test.report(test.parse_args(["--checkpoint", str(run / "best_model.pth"),
                                                "--device", "cpu"]))
        assert float(row["test_accuracy"]) == reported["accuracy"]
        assert int(row["kept_epoch"]) == reported["epoch"] and int(row["last_epoch"]) == 2
        hparams = torch.load(run / "best_model.pth", weights_only=True)["hparams"]
        assert hparams["seed"] == int(row["seed"]) and hparams["subset"] == 1000
    assert rows[0]["test_accuracy"] != rows[1]["test_accuracy"] or \
        rows[0]["val_accuracy"] != rows[1]["val_accuracy"], "two seeds, two runs"
    tests = [float(row["test_accuracy"]) for row in rows]
    mean = re.search(r"^\s+mean\s+\S+\s+(\d+\.\d+)%", result.stdout, re.M)
    assert mean and abs(float(mean[1]) - 100 * sum(tests) / 2) < 1e-3, result.stdout
    error = re.search(r"^\s+std\. error\s+\S+\s+(\d+\.\d+)%", result.stdout, re.M)
    assert abs(float(error[1]) - 100 * abs(tests[0] - tests[1]) / 2) < 1e-3   # n = 2
    assert (folder / "curves.png").stat().st_size > 10_000
    assert json.loads((folder / study.RECIPE).read_text())["seeds"] == [0, 1]


@pytest.mark.processes
def test_a_stopped_study_resumes_without_training_finished_seeds_again(tmp_path):
    folder = tmp_path / "stopped"
    # Slow enough (about a second an epoch) that seed 1 is stopped within its second epoch.
    slower = ["--subset", "8000", "--epochs", "2", "--batch-size", "50", "--device", "cpu"]
    command = [sys.executable, str(ROOT / "study.py"), "--seeds", "2", "--jobs", "1", *slower,
               "--save-dir", str(folder)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_until_stops_are_handled(process)
    deadline = time.monotonic() + 120
    while not (folder / "seed-1" / "last.pth").exists():     # seed 0 done, seed 1 at work
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "1 of 2 seeds finished" in err and "python study.py --resume" in err, err
    assert "Traceback" not in err + (folder / "seed-1" / "train.log").read_text()
    first = (folder / "seed-0" / "best_model.pth").stat().st_mtime_ns

    result = run_main(study, "--resume", "--save-dir", folder)
    assert result.returncode == 0, result.stderr
    assert [row["seed"] for row in table_rows(folder)] == ["0", "1"]
    assert (folder / "seed-0" / "best_model.pth").stat().st_mtime_ns == first
    assert "seed 0: training" not in result.stdout
    assert "resuming" in (folder / "seed-1" / "train.log").read_text()


@pytest.mark.processes
def test_against_another_recipe_or_a_saved_study_prints_the_difference(two_seeds, tmp_path):
    """--against 'flags' runs that recipe over the same seeds in SAVE_DIR/against; --against
    DIR reads a finished study. Either way: the difference of the test means, with its
    standard error."""
    folder, _ = two_seeds
    ours = tmp_path / "ours"
    result = run_main(study, "--seeds", "2", *TINY, "--save-dir", ours,
                      "--against", " ".join([*TINY, "--lr", "1e-2"]))
    assert result.returncode == 0, result.stderr
    assert json.loads((ours / "against" / study.RECIPE).read_text())["flags"][-2:] == \
        ["--lr", "1e-2"]
    again = run_main(study, "--resume", "--save-dir", ours, "--against", folder)
    assert again.returncode == 0, again.stderr
    assert "training" not in again.stdout            # both studies had finished
    for other, printed in ((ours / "against", result.stdout), (folder, again.stdout)):
        mine, theirs = ([float(r["test_accuracy"]) for r in table_rows(f)]
                        for f in (ours, other))
        line = re.search(r"test acc: ([+-]\d+\.\d+) points, standard error (\d+\.\d+) "
                         r"\((.+)\)", printed)
        assert line, printed
        assert abs(float(line[1]) - 100 * (sum(mine) - sum(theirs)) / 2) < 1e-3
    other_recipe = run_main(study, "--resume", "--save-dir", ours, "--against",
                            " ".join([*TINY, "--lr", "1e-3"]))
    assert_one_line_error(other_recipe, "holds the study of --against", "--lr 1e-2", code=2)


@pytest.mark.parametrize("args, message, code", [
    (["--seed", "3"], "--seed is the study's to set", 2),
    (["--seeds", "0"], "names no seeds", 2),
    (["--seeds", "a-b"], "expected a count", 2),
    (["--lr", "-1"], "--lr: must be > 0", 2),
    (["--resume"], "no study in", 1),
])
def test_mistakes_are_one_line(tmp_path, args, message, code):
    result = run_main(study, *args, "--save-dir", tmp_path / "none")
    assert_one_line_error(result, message, code=code)


@pytest.mark.parametrize("against, message, code", [
    (".", "no study in .", 1),                 # a folder, but not a study's
    ("--lr -1", "--lr: must be > 0", 2),
])
def test_a_mistake_in_against_is_said_before_any_training(tmp_path, against, message, code):
    result = run_main(study, "--seeds", "1", *TINY, "--save-dir", tmp_path, "--against",
                      against)
    assert_one_line_error(result, message, code=code)
    assert "training" not in result.stdout and not (tmp_path / "seed-0").exists()


@pytest.mark.processes
def test_a_folder_that_holds_a_study_is_not_overwritten(two_seeds):
    folder, _ = two_seeds
    result = run_main(study, "--seeds", "2", *TINY, "--save-dir", folder)
    assert_one_line_error(result, "already holds a study", "--resume", code=2)
