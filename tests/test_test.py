import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import datasets
import engine
import test
from conftest import ROOT, SMOKE, assert_one_line_error, run_main
from net import LeNet5


def test_report_table_and_json_agree_with_the_checkpoint(trained, tmp_path):
    checkpoint = trained / "best_model.pth"
    table = run_main(test, "--checkpoint", checkpoint, "--confusion", tmp_path / "c.png")
    assert table.returncode == 0, table.stderr
    with Image.open(tmp_path / "c.png") as picture:
        assert picture.format == "PNG" and picture.width > 600
    report = json.loads(run_main(test, "--checkpoint", checkpoint, "--json",
                                 "--confusion", tmp_path / "c.png").stdout)
    confusion = report["confusion"]
    assert len(confusion) == 10 and all(len(row) == 10 for row in confusion)
    assert sum(map(sum, confusion)) == report["total"] == 10_000
    correct = sum(confusion[i][i] for i in range(10))
    assert report["accuracy"] == correct / 10_000 and report["errors"] == 10_000 - correct
    assert [sum(row) for row in confusion][:2] == [980, 1135]    # test images per digit
    assert report["per_class_accuracy"]["1"] == confusion[1][1] / 1135
    assert f"accuracy    {report['accuracy']:.2%} ({report['errors']} errors / 10000)" \
        in table.stdout
    assert "confusion matrix" in table.stdout
    lines = table.stdout.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("confusion matrix (")))
    matrix = lines[header + 2:header + 12]
    assert [int(n) for n in matrix[3].split()[1:]] == confusion[3]
    assert len({len(line) for line in matrix}) == 1                 # aligned columns


def test_pictures_are_drawn_beside_the_checkpoint(trained, tmp_path):
    """Testing another run's model does not overwrite save_model/'s pictures; run from another
    folder, test.py reads the shipped test set."""
    (tmp_path / "other").mkdir()
    shutil.copy(trained / "best_model.pth", tmp_path / "other")
    result = run_main(test, "--checkpoint", Path("other/best_model.pth"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("confusion matrix drawn in other/confusion.png, reliability "
                                  "diagram in other/reliability.png\n")
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == \
        ["best_model.pth", "confusion.png", "reliability.png"]
    assert not (tmp_path / "save_model").exists() and not (tmp_path / "data").exists()


def test_last_pth_says_where_the_calibration_is(trained, tmp_path):
    """last.pth (a run's last epoch, the state --resume needs) is read as it is, and the note
    says why it has no calibration."""
    result = run_main(test, "--checkpoint", trained / "last.pth", "--confusion",
                      tmp_path / "c.png")
    assert result.returncode == 0, result.stderr
    assert "last.pth holds no calibration (calibration is added to best_model.pth when " \
           "training ends): its probabilities are the network's own" in result.stderr


def tutorial_test_accuracy(model):
    """The tutorial's own test loop: torchvision dataset, ToTensor, batches of 16."""
    from torchvision import datasets as torchvision_datasets, transforms   # a second to import
    data = torchvision_datasets.MNIST(ROOT / "data", train=False, transform=transforms.ToTensor())
    correct = 0
    model.eval()
    with torch.no_grad():
        for x, y in DataLoader(data, batch_size=16):
            correct += (model(x).argmax(1) == y).sum().item()
    return correct


def test_tutorial_state_dict_scores_what_it_scored_in_the_tutorial(tmp_path):
    torch.manual_seed(0)
    images, labels = datasets.load(ROOT / "data", "train")
    model = LeNet5()           # trained the tutorial's way: raw [0, 1] pixels, no normalization
    engine.train_one_epoch(model, datasets.Batches(
        images[:3000], labels[:3000], 16, torch.device("cpu"), mean=0.0, std=1.0,
        shuffle=True, generator=torch.Generator().manual_seed(0)),
        torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9))
    path = tmp_path / "tutorial_model.pth"
    torch.save(model.state_dict(), path)
    correct = tutorial_test_accuracy(model)
    result = run_main(test, "--checkpoint", path, "--json", "--confusion", tmp_path / "c.png")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["total"] - report["errors"] == correct
    assert report["accuracy"] > 0.8


def test_missing_checkpoint_says_to_train_first(tmp_path):
    result = run_main(test, "--checkpoint", tmp_path / "best_model.pth")
    assert_one_line_error(result, "no checkpoint at", "python train.py")


@pytest.mark.parametrize("content, message", [
    (b"id,label\n1,7\n", "not a readable PyTorch checkpoint"),
    (b"", "is empty"),
])
def test_file_that_is_not_a_checkpoint(tmp_path, content, message):
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    assert_one_line_error(run_main(test, "--checkpoint", path), message, str(path))


def test_checkpoint_of_another_model(tmp_path):
    path = tmp_path / "mlp.pth"
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).state_dict(),
               path)
    assert_one_line_error(run_main(test, "--checkpoint", path), "weights of another model")


def test_damaged_data(trained, data_copy):
    archive = data_copy / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    archive.write_bytes(b"garbage")
    result = run_main(test, "--checkpoint", trained / "best_model.pth", "--data-dir", data_copy)
    assert_one_line_error(result, "t10k-images-idx3-ubyte.gz is damaged")


def test_unknown_device(trained):
    result = run_main(test, "--checkpoint", trained / "best_model.pth", "--device", "gpu")
    assert_one_line_error(result, "invalid choice: 'gpu'", code=2)


@pytest.mark.parametrize("script, args, picture", [
    ("test.py", ["--confusion", "{tmp}/confusion.png"], "confusion.png"),
    ("show.py", ["--out", "{tmp}/predictions.png"], "predictions.png"),
    ("train.py", [*SMOKE, "--save-dir", "{tmp}/run"], None),
])
@pytest.mark.processes
def test_a_reader_that_stops_early_gets_no_traceback(trained, tmp_path, script, args, picture):
    """`python test.py | head`: the pipe closes before the report is written; the picture
    is still drawn."""
    read, write = os.pipe()
    os.close(read)                       # nobody will read: the first write fails with EPIPE
    args = [str(a).format(tmp=tmp_path) for a in args]
    if script != "train.py":
        args = ["--checkpoint", str(trained / "best_model.pth"), *args]
    try:
        result = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT,
                                stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, \
        result.stderr
    assert result.returncode == 1
    if picture:                          # drawn before the report is printed
        assert (tmp_path / picture).stat().st_size > 0


def test_another_data_set_is_reported_with_its_class_names(small_runs, small_sets, tmp_path):
    checkpoint = small_runs["fashion-mnist"][0] / "best_model.pth"
    table = run_main(test, "--checkpoint", checkpoint, "--data-dir", small_sets,
                     "--confusion", tmp_path / "c.png")
    assert table.returncode == 0, table.stderr
    report = json.loads(run_main(test, "--checkpoint", checkpoint, "--data-dir", small_sets,
                                 "--json", "--confusion", tmp_path / "c.png").stdout)
    assert report["dataset"] == "fashion-mnist" and report["total"] == 100
    assert list(report["per_class_accuracy"]) == list(
        datasets.DATASETS["fashion-mnist"].classes)
    lines = table.stdout.splitlines()
    row = next(line for line in lines if line.strip().startswith("Ankle boot "))
    assert row.split()[2:4] == ["10", str(10 - report["confusion"][9][9])]  # images, errors
    assert "confusion matrix (rows: true class, columns: predicted class)" in table.stdout
    matrix_row = next(line for line in lines if line.strip().startswith("Ankle boot 9"))
    assert [int(n) for n in matrix_row.split()[3:]] == report["confusion"][9]
    with Image.open(tmp_path / "c.png") as picture:
        assert picture.format == "PNG"


def test_a_checkpoint_from_before_data_sets_is_read_as_mnist(trained, tmp_path):
    old = torch.load(trained / "best_model.pth", weights_only=True)
    del old["dataset"]
    torch.save(old, tmp_path / "old.pth")
    result = run_main(test, "--checkpoint", tmp_path / "old.pth", "--json",
                      "--confusion", tmp_path / "c.png")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dataset"] == "mnist" and report["confusion"][0][0] > 900


def test_calibration_is_reported_and_drawn(reader, tmp_path):
    """The shipped model: 9.1 % calibration error on its own, 0.14 % calibrated (docs/trust.md)."""
    result = run_main(test, "--checkpoint", reader, "--confusion", tmp_path / "c.png")
    assert result.returncode == 0, result.stderr
    match = re.search(r"calibration error (\d+\.\d+)% with temperature (\d\.\d+) \(the "
                      r"network's own probabilities: (\d+\.\d+)%\)", result.stdout)
    assert match and float(match[1]) <= 0.5 and float(match[3]) > 5, result.stdout
    assert re.search(r"refused as not a digit: 0\.\d\d% of the test images", result.stdout)
    with Image.open(tmp_path / "reliability.png") as picture:
        assert picture.width > 400
    report = json.loads(run_main(test, "--checkpoint", reader, "--json", "--confusion",
                                 tmp_path / "c.png", "--reliability", tmp_path / "r.png").stdout)
    assert report["calibration_error"] <= 0.005 and report["refused_as_not_digit"] <= 0.01
    assert sum(count for *_, count in report["reliability"]) == 10000


def test_a_checkpoint_without_calibration_says_so_once(trained, tmp_path):
    checkpoint = torch.load(trained / "best_model.pth", weights_only=True)
    del checkpoint["calibration"]
    torch.save(checkpoint, tmp_path / "old.pth")
    result = run_main(test, "--checkpoint", tmp_path / "old.pth", "--confusion",
                      tmp_path / "c.png")
    assert result.returncode == 0 and result.stderr.count("holds no calibration") == 1
    assert "with temperature 1.000" in result.stdout and "refused" not in result.stdout
