"""export.py: an ONNX file that ONNX Runtime runs as the checkpoint does, on raw pixels."""
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import torch

import datasets
import export
import test
from checkpoint import load_checkpoint, model_from_checkpoint
from conftest import ROOT, assert_one_line_error, run, run_main


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """Exported with no --out: the file is written beside the checkpoint."""
    folder = tmp_path_factory.mktemp("export")
    shutil.copy(trained / "best_model.pth", folder)
    result = run_main(export, "--checkpoint", folder / "best_model.pth")
    assert result.returncode == 0, result.stderr
    out = folder / "lenet5.onnx"
    assert f"\nwrote {out} (" in result.stdout and out.stat().st_size > 200_000
    return out, result.stdout


def test_onnx_runtime_agrees_with_the_checkpoint_on_every_test_image(exported):
    _, stdout = exported
    match = re.search(r"agree on ([\d,]+) of 10,000 test images; largest logit difference "
                      r"(\S+)", stdout)
    assert match and match[1] == "10,000", stdout
    assert float(match[2]) < export.MAX_LOGIT_DIFFERENCE


def test_the_file_takes_raw_pixels_in_any_batch_size_and_describes_itself(trained, exported):
    path, stdout = exported
    checkpoint = load_checkpoint(trained / "best_model.pth")
    model = model_from_checkpoint(checkpoint, torch.device("cpu"), "best_model.pth")
    images, labels = datasets.load(ROOT / "data", "test")
    pixels = images[:7].unsqueeze(1).float() / 255
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = model((pixels - checkpoint["mean"]) / checkpoint["std"])
    calibrated = (expected / checkpoint["calibration"]["temperature"]).softmax(1)
    for count in (1, 7):                         # the batch size is not baked in
        got, probabilities = session.run(None, {"pixels": pixels[:count].numpy()})
        assert got.shape == (count, 10)
        assert np.abs(got - expected[:count].numpy()).max() < export.MAX_LOGIT_DIFFERENCE
        assert np.abs(probabilities - calibrated[:count].numpy()).max() < 1e-5
    assert json.loads(session.get_modelmeta().custom_metadata_map["temperature"]) == \
        checkpoint["calibration"]["temperature"]
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == checkpoint["classes"] and meta["dataset"] == "mnist"
    assert json.loads(meta["epoch"]) == checkpoint["epoch"]
    report = json.loads(run_main(test, "--checkpoint", trained / "best_model.pth", "--json",
                                 "--confusion", path.parent / "c.png").stdout)
    assert json.loads(meta["test_accuracy"]) == pytest.approx(report["accuracy"])
    assert f"test accuracy {report['accuracy']:.2%}" in stdout


def test_an_uncalibrated_checkpoint_exports_probabilities_said_to_be_the_networks_own(
        trained, exported, tmp_path):
    checkpoint = torch.load(trained / "best_model.pth", weights_only=True)
    del checkpoint["calibration"]
    torch.save(checkpoint, tmp_path / "uncalibrated.pth")
    out = tmp_path / "uncalibrated.onnx"
    result = run_main(export, "--checkpoint", tmp_path / "uncalibrated.pth", "--out", out)
    assert result.returncode == 0, result.stderr
    meta = {}
    for path in (exported[0], out):
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        meta[path] = session.get_modelmeta().custom_metadata_map
    assert meta[exported[0]]["outputs"].endswith("calibrated on the validation images")
    assert meta[out]["outputs"].endswith("softmax(logits), the network's own (its checkpoint "
                                         "holds no calibration)")
    assert json.loads(meta[out]["temperature"]) == 1.0


@pytest.mark.processes
def test_the_readme_example_runs_on_the_exported_file(exported, tmp_path):
    path, _ = exported
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(import json, numpy as np, onnxruntime\n.*?)```", readme,
                     re.S)[1]
    result = subprocess.run([sys.executable, "-c", code.replace("save_model/lenet5.onnx",
                                                                str(path))],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"\d\n", result.stdout), result.stdout


def test_a_graph_that_does_not_match_is_not_written(trained, tmp_path, monkeypatch):
    out = tmp_path / "lenet5.onnx"
    out.write_bytes(b"the previous export")
    monkeypatch.setattr(export, "MAX_LOGIT_DIFFERENCE", 0.0)   # no graph can pass this
    result = run_main(export, "--checkpoint", trained / "best_model.pth", "--out", out)
    assert_one_line_error(result, "does not match the checkpoint", "was not written")
    assert out.read_bytes() == b"the previous export"


@pytest.mark.processes
def test_missing_checkpoint_ends_the_real_process_in_one_line(tmp_path):
    assert_one_line_error(run("export.py", "--checkpoint", tmp_path / "none.pth"),
                          "no checkpoint at", "python train.py")


def test_an_unwritable_out_is_one_line(trained, tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    result = run_main(export, "--checkpoint", trained / "best_model.pth", "--out",
                      blocker / "lenet5.onnx")
    assert_one_line_error(result, f"cannot write {blocker / 'lenet5.onnx'}", "--out")
