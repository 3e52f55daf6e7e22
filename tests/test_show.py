import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pillow_heif
import pytest
from PIL import Image

import datasets
import show
from conftest import ROOT, assert_one_line_error, run_main

LINE = re.compile(r"\s*(\d+)\s+(\d)\s+(\d)\s+(\d+\.\d\d)%\s+(right|WRONG)$")


def prediction_lines(stdout):
    return [LINE.match(line) for line in stdout.splitlines() if LINE.match(line)]


def test_first_ten_predictions_and_a_valid_png(trained, tmp_path):
    out = tmp_path / "pictures" / "predictions.png"
    result = run_main(show, "--checkpoint", trained / "best_model.pth", "--out", out)
    assert result.returncode == 0, result.stderr
    lines = prediction_lines(result.stdout)
    assert [int(m[1]) for m in lines] == list(range(10))
    assert [int(m[3]) for m in lines[:5]] == [7, 2, 1, 0, 4]          # the real test labels
    assert all((m[2] == m[3]) == (m[5] == "right") for m in lines)
    assert all(0 < float(m[4]) <= 100 for m in lines)
    with Image.open(out) as picture:
        picture.verify()
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.width >= 10 * 112
        assert np.asarray(picture.convert("L")).std() > 50   # digits and captions, no blank


def test_wrong_predictions_are_marked_red(trained, tmp_path):
    out = tmp_path / "p.png"
    result = run_main(show, "--checkpoint", trained / "best_model.pth", "--count", "40",
                      "--out", out)
    assert result.returncode == 0, result.stderr
    wrong = sum(m[5] == "WRONG" for m in prediction_lines(result.stdout))
    rgb = np.asarray(Image.open(out).convert("RGB")).astype(int)
    red = (rgb[..., 0] > 180) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)
    assert red.any() == (wrong > 0), wrong


def test_start_count_and_random(trained, tmp_path):
    checkpoint = trained / "best_model.pth"
    result = run_main(show, "--checkpoint", checkpoint, "--start", "9995", "--count", "3",
                      "--out", tmp_path / "a.png")
    assert [int(m[1]) for m in prediction_lines(result.stdout)] == [9995, 9996, 9997]
    picks = [prediction_lines(run_main(show, "--checkpoint", checkpoint, "--random",
                                       "--count", "5", "--seed", "7",
                                       "--out", tmp_path / "b.png").stdout) for _ in range(2)]
    indices = [[int(m[1]) for m in p] for p in picks]
    assert indices[0] == indices[1] and len(set(indices[0])) == 5
    assert indices[0] != list(range(5))


def test_shown_predictions_are_the_models_own(trained, tmp_path):
    """The chosen images alone are predicted; each line must match the whole test set's run."""
    import torch

    import engine
    import datasets
    from checkpoint import load_checkpoint, model_from_checkpoint
    from confidence import Reader
    checkpoint = load_checkpoint(trained / "best_model.pth")
    model = model_from_checkpoint(checkpoint, torch.device("cpu"), "best_model.pth")
    images, labels = datasets.load(ROOT / "data", "test")
    batches = datasets.Batches(images, labels, engine.EVAL_BATCH_SIZE, torch.device("cpu"),
                               mean=checkpoint["mean"], std=checkpoint["std"])
    reader = Reader(model, checkpoint)        # the calibrated probabilities
    confidence, predicted = torch.cat([reader.probabilities(x) for x, _ in batches]).max(1)
    for request, count in ((["--start", "37"], 12), (["--random", "--seed", "3"], 9)):
        result = run_main(show, "--checkpoint", trained / "best_model.pth", *request,
                          "--count", count, "--out", tmp_path / "p.png")
        assert result.returncode == 0, result.stderr
        lines = prediction_lines(result.stdout)
        assert len(lines) == count
        for m in lines:
            index = int(m[1])
            assert (int(m[2]), int(m[3])) == (int(predicted[index]), int(labels[index])), m[0]
            assert abs(float(m[4]) - 100 * float(confidence[index])) < 0.006, m[0]


def test_bad_requests_are_one_line(trained, tmp_path):
    checkpoint = trained / "best_model.pth"
    assert_one_line_error(run_main(show, "--checkpoint", checkpoint, "--start", "10000"),
                          "--start must be between 0 and 9999")
    assert_one_line_error(run_main(show, "--checkpoint", checkpoint, "--count", "0"),
                          "must be >= 1", code=2)
    assert_one_line_error(run_main(show, "--checkpoint", checkpoint, "--out", tmp_path / "x"),
                          "give the picture a file type", code=2)
    assert_one_line_error(run_main(show, "--checkpoint", tmp_path / "none.pth"),
                          "python train.py")


def test_errors_lists_only_mistakes_most_confident_first(trained, tmp_path):
    out = tmp_path / "errors.png"
    result = run_main(show, "--checkpoint", trained / "best_model.pth", "--errors",
                      "--count", "15", "--out", out)
    assert result.returncode == 0, result.stderr
    lines = prediction_lines(result.stdout)
    assert len(lines) == 15 and all(m[5] == "WRONG" and m[2] != m[3] for m in lines)
    confidences = [float(m[4]) for m in lines]
    assert confidences == sorted(confidences, reverse=True)
    total = int(re.search(r"(\d+) of 10000 test images are misclassified", result.stdout)[1])
    assert total >= 15
    with Image.open(out) as picture:
        picture.verify()


def test_own_pictures_folder_with_a_bad_file_and_a_missing_path(trained, tmp_path):
    from test_handwriting import render, transparent
    folder = tmp_path / "mine"
    folder.mkdir()
    render(0).save(folder / "seven.jpg")
    transparent(2).save(folder / "one.png")
    pillow_heif.from_pillow(render(1).convert("RGB")).save(folder / "two.heic")   # an iPhone's
    (folder / "broken.png").write_text("not a picture")
    Image.new("L", (80, 80), 230).save(folder / "blank.png")
    (folder / "album.png").mkdir()        # a folder, named as a picture: searched, not read
    out = tmp_path / "own.png"
    result = run_main(show, "--checkpoint", trained / "best_model.pth", "--image", folder,
                      tmp_path / "missing.jpg", "--out", out)
    assert result.returncode == 0, result.stderr
    # A two-epoch model may find a picture no digit; each still gets its line of figures.
    reading = r"(?:\d  \(\d+\.\d% sure;|not a digit \(as a digit: \d \d+\.\d%,)"
    answers = dict(re.findall(rf"(\S+\.(?:jpg|png|heic)): ({reading})", result.stdout))
    assert set(answers) == {str(folder / name) for name in ("seven.jpg", "one.png", "two.heic")}
    assert re.search(rf"one\.png: {reading} then \d \d+\.\d%, \d \d+\.\d%\)", result.stdout)
    skipped = result.stderr.strip().splitlines()
    assert len(skipped) == 3 and all(line.startswith("skipped ") for line in skipped)
    assert "broken.png" in result.stderr and "not a picture (PNG" in result.stderr
    assert "blank.png" in result.stderr and "missing.jpg: no such file" in result.stderr
    with Image.open(out) as picture:
        assert picture.width >= 3 * 2 * 112           # original and prepared, per picture


def test_a_pattern_that_the_shell_passed_on_is_matched(trained, tmp_path):
    """Windows' shells pass --image *.jpg on as it is: the pictures it matches are read, other
    files left alone, and a pattern that matches none says so."""
    from test_handwriting import render
    (tmp_path / "mine").mkdir()
    render(0).save(tmp_path / "mine" / "seven.jpg")
    render(2).save(tmp_path / "mine" / "one.png")
    (tmp_path / "mine" / "notes.txt").write_text("not a picture")
    result = run_main(show, "--checkpoint", trained / "best_model.pth", "--image", "mine/*",
                      "mine/*.gif", "--out", tmp_path / "own.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.findall(r"^mine/(\S+): ", result.stdout, re.M) == ["one.png", "seven.jpg"]
    assert result.stderr == "skipped mine/*.gif: no pictures match it\n"


@pytest.mark.processes
@pytest.mark.skipif(sys.platform != "linux", reason="xdg-open is Linux's opener")
def test_show_opens_the_picture_or_says_why_it_cannot(trained, tmp_path, monkeypatch):
    """--show hands the picture to the desktop's opener; with no screen (over SSH), or no
    program that shows pictures, it says so instead of nothing."""
    opened = tmp_path / "opened"
    opener = tmp_path / "bin" / "xdg-open"     # stands in for the desktop's
    opener.parent.mkdir()
    opener.write_text(f'#!/bin/sh\necho "$1" >> {opened}\nexit "${{FAKE_EXIT:-0}}"\n')
    opener.chmod(0o755)
    monkeypatch.setenv("PATH", f"{opener.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    out = tmp_path / "p.png"
    flags = ("--checkpoint", trained / "best_model.pth", "--count", "1", "--out", out, "--show")
    result = run_main(show, *flags)
    assert result.stdout.endswith(f"picture written to {out}\nno screen to show it on (a "
                                  f"session over SSH?): copy {out} to a machine with one\n")
    assert not opened.exists()
    monkeypatch.setenv("DISPLAY", ":0")
    result = run_main(show, *flags)
    assert result.stdout.endswith(f"picture written to {out}\n"), result.stdout
    assert opened.read_text() == f"{out}\n"
    monkeypatch.setenv("FAKE_EXIT", "3")      # xdg-open's "no method available"
    result = run_main(show, *flags)
    assert result.returncode == 0
    assert result.stdout.endswith(f"xdg-open found no program to show {out}; open it "
                                  f"yourself\n")


def test_own_pictures_none_readable(trained, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_main(show, "--checkpoint", trained / "best_model.pth", "--image",
                      tmp_path / "empty", "https://example.com/digit.png", "--out",
                      tmp_path / "x.png")
    assert_one_line_error(result, "none of the pictures could be read")
    assert "no pictures in this folder" in result.stderr
    assert "skipped https://example.com/digit.png: a web address; save the picture and pass " \
           "the file" in result.stderr


def test_each_mode_has_its_own_default_picture_beside_the_checkpoint(trained, tmp_path):
    """Another run's model is shown in its own folder, not over save_model/'s pictures."""
    from test_handwriting import render
    render(0).save(tmp_path / "seven.jpg")
    (tmp_path / "other").mkdir()
    shutil.copy(trained / "best_model.pth", tmp_path / "other")
    common = ["--checkpoint", Path("other/best_model.pth"), "--data-dir", ROOT / "data"]
    for mode, name in (([], "predictions.png"), (["--errors"], "errors.png"),
                       (["--image", tmp_path / "seven.jpg"], "own.png"),
                       (["--layers"], "layers.png")):
        result = run_main(show, *common, *mode, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"picture written to other/{name}" in result.stdout
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == \
        ["best_model.pth", "errors.png", "layers.png", "own.png", "predictions.png"]
    assert not (tmp_path / "save_model").exists()


def test_another_data_set_is_shown_with_its_class_names(small_runs, small_sets, tmp_path):
    checkpoint = small_runs["fashion-mnist"][0] / "best_model.pth"
    result = run_main(show, "--checkpoint", checkpoint, "--data-dir", small_sets,
                      "--out", tmp_path / "p.png")
    assert result.returncode == 0, result.stderr
    classes = datasets.DATASETS["fashion-mnist"].classes
    width = max(map(len, classes))      # the name columns are right-aligned to the longest
    rows = [line for line in result.stdout.splitlines() if line[:5].strip().isdigit()]
    assert len(rows) == 10
    for line in rows:
        index = int(line[:5])
        predicted = line[6:6 + width].strip()
        actual = line[7 + width:7 + 2 * width].strip()
        assert actual == classes[index % 10], line          # the small set's labels
        assert predicted in classes and line.endswith("right" if predicted == actual else
                                                      "WRONG"), line
    with Image.open(tmp_path / "p.png") as picture:
        assert picture.width >= 10 * 112

    refused = run_main(show, "--checkpoint", checkpoint, "--image", tmp_path / "p.png")
    assert_one_line_error(refused, "trained on Fashion-MNIST", "needs a model trained on MNIST")


def test_own_pictures_say_not_a_digit_and_how_sure(reader, tmp_path):
    """Photos of digits are read with how sure; pictures without one say so and name the
    closest digit; every file is still read."""
    import sys
    sys.path.insert(0, str(ROOT / "tests"))
    import datasets
    import nondigits
    import photos
    images, labels = datasets.load(ROOT / "data", "test")
    digits = photos.photo_set(images, labels, per_kind=1, seed=4)[:5]
    for i, (_, digit, data) in enumerate(digits):
        (tmp_path / f"a{i}.jpg").write_bytes(data)
    others = [picture for kind, picture in nondigits.nondigit_set(per_kind=1, seed=5)
              if kind in ("noise", "hatching", "dot")]
    for i, picture in enumerate(others):
        picture.save(tmp_path / f"b{i}.png")
    result = run_main(show, "--checkpoint", reader, "--image", tmp_path, "--out",
                      tmp_path / "own.png")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for i, (_, digit, _) in enumerate(digits):
        line = next(text for text in lines if f"a{i}.jpg" in text)
        assert re.search(rf"a{i}\.jpg: {digit}  \(\d+\.\d% sure; then ", line), line
    for i in range(len(others)):
        line = next(text for text in lines if f"b{i}.png" in text)
        assert re.search(rf"b{i}\.png: not a digit \(as a digit: \d \d+\.\d%, then ", line), line
    assert (tmp_path / "own.png").exists()


@pytest.mark.processes
def test_the_readme_example_reads_a_photo_and_refuses_a_nondigit(reader, tmp_path):
    """The README's lines for reading a picture in one's own code, run as printed from the
    repository's folder, on a photo of a digit and on a picture of none."""
    sys.path.insert(0, str(ROOT / "tests"))
    import nondigits
    import photos
    images, labels = datasets.load(ROOT / "data", "test")
    (_, digit, data), = photos.photo_set(images, labels, per_kind=1, seed=6)[:1]
    (tmp_path / "digit.jpg").write_bytes(data)
    nondigits.nondigit_set(per_kind=1, seed=5)[0][1].save(tmp_path / "none.png")
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(import torch, confidence, handwriting\n.*?)```", readme,
                     re.S)[1].replace("save_model/best_model.pth", str(reader))
    both = "".join(code.replace("my_digit.jpg", str(tmp_path / name))
                   for name in ("digit.jpg", "none.png"))
    result = subprocess.run([sys.executable, "-c", both], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"{digit} \d+\.\d% True\n\d \d+\.\d% False\n", result.stdout), \
        result.stdout


def test_layers_of_a_test_image_and_of_an_own_picture(reader, tmp_path):
    """show.py --layers draws one image's layers and the kernels; it reads the picture as
    --image does, and another image makes another picture."""
    data = ["--data-dir", ROOT / "data", "--out", tmp_path / "layers.png"]
    result = run_main(show, "--checkpoint", reader, "--layers", "--index", "3", *data)
    assert result.returncode == 0, result.stderr
    assert re.match(r"test image #3 \(labelled 0\): 0  \(\d+\.\d% sure; then ", result.stdout)
    assert f"picture written to {tmp_path / 'layers.png'}" in result.stdout
    with Image.open(tmp_path / "layers.png") as picture:
        assert picture.format == "PNG" and picture.width > 1000 and picture.height > 1200
        first = np.asarray(picture.convert("RGB"))
        red_and_blue = ((first[..., 0] > 150) & (first[..., 2] < 100)).mean(), \
            ((first[..., 2] > 150) & (first[..., 0] < 100)).mean()
        assert min(red_and_blue) > 0.01, red_and_blue      # the diverging colour map is used
    run_main(show, "--checkpoint", reader, "--layers", "--index", "4", *data)
    with Image.open(tmp_path / "layers.png") as picture:
        assert not np.array_equal(np.asarray(picture.convert("RGB")), first)

    digit = Image.fromarray(255 - datasets.load(ROOT / "data", "test")[0][0].numpy())
    digit.resize((200, 200)).save(tmp_path / "seven.png")
    own = run_main(show, "--checkpoint", reader, "--layers", "--image", tmp_path / "seven.png",
                   "--out", tmp_path / "inside.png")
    assert own.returncode == 0, own.stderr
    listed = run_main(show, "--checkpoint", reader, "--image", tmp_path / "seven.png",
                      "--out", tmp_path / "own.png")
    assert own.stdout.splitlines()[0] == listed.stdout.splitlines()[0].replace(
        str(tmp_path / "seven.png"), "seven.png")
    assert own.stdout.startswith("seven.png: 7  (")
    assert (tmp_path / "inside.png").stat().st_size > 50_000


@pytest.mark.parametrize("args, message", [
    (["--layers", "--errors"], "--layers draws one image"),
    (["--layers", "--image", "a.png", "b.png"], "pass one --image FILE"),
    (["--index", "3"], "--index picks the image for --layers"),
    (["--layers", "--index", "10000"], "--index must be below 10000, got 10000"),
    (["--layers", "--index", "-1"], "must be >= 0"),
    (["--layers", "--image", "missing.png"], "missing.png: no such file or folder"),
    (["--layers", "--image", "."], "is a folder: pass one of its files"),
])
def test_layers_bad_requests_are_one_line(reader, tmp_path, args, message):
    result = run_main(show, "--checkpoint", reader, *args, "--data-dir", ROOT / "data",
                      cwd=tmp_path)
    assert_one_line_error(result, message, code=1 if "below" in message or "missing" in
                          message or "folder" in message else 2)


def test_layers_of_a_pattern_that_a_shell_passed_on(reader, tmp_path):
    """A Windows shell passes --image 'seven*.png' on as it is: one match is drawn, more or
    none are one line each; a file that is no picture is named once."""
    digit = Image.fromarray(255 - datasets.load(ROOT / "data", "test")[0][0].numpy())
    digit.resize((200, 200)).save(tmp_path / "seven.png")
    (tmp_path / "notes.pdf").write_bytes(b"%PDF-1.4 a document")
    layers = ["--checkpoint", reader, "--layers", "--out", tmp_path / "layers.png", "--image"]
    one = run_main(show, *layers, "seven*.png", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert one.stdout.startswith("seven.png: 7  (")
    digit.save(tmp_path / "seven-again.png")
    assert_one_line_error(run_main(show, *layers, "seven*.png", cwd=tmp_path),
                          "--layers draws one picture and seven*.png matches 2: pass one")
    assert_one_line_error(run_main(show, *layers, "eight*.png", cwd=tmp_path),
                          "eight*.png: no pictures match it")
    assert_one_line_error(run_main(show, *layers, "notes.pdf", cwd=tmp_path),
                          "error: notes.pdf: cannot read it: not a picture (PNG, JPEG")


def test_a_long_list_is_printed_whole_and_drawn_up_to_a_picture_a_viewer_shows(
        trained, tmp_path, monkeypatch):
    """--count 10000 drew a picture 168,000 px tall (208 megapixels, 2 GB to make)."""
    monkeypatch.setattr(show, "MAX_TILES", 20)
    common = ["--checkpoint", trained / "best_model.pth", "--data-dir", ROOT / "data"]
    whole = run_main(show, *common, "--count", "20", "--out", tmp_path / "20.png")
    cut = run_main(show, *common, "--count", "25", "--out", tmp_path / "25.png")
    assert whole.stdout.endswith(f"picture written to {tmp_path / '20.png'}\n")
    assert cut.stdout.endswith(f"picture written to {tmp_path / '25.png'} (the first 20 of "
                               f"25)\n")
    assert len(prediction_lines(cut.stdout)) == 25
    with Image.open(tmp_path / "20.png") as twenty, Image.open(tmp_path / "25.png") as first:
        assert first.size == twenty.size


def test_captions_say_how_sure_as_the_printed_lines_do(trained, tmp_path, monkeypatch):
    """A tile's "pred 7 (99.8%)" is the line's confidence to a tenth: a calibrated 99.8 % is
    not rounded to a certain 100 %."""
    captions = []
    drawn = show.tile
    monkeypatch.setattr(show, "tile", lambda image, lines, *rest:
                        captions.append(lines[0]) or drawn(image, lines, *rest))
    result = run_main(show, "--checkpoint", trained / "best_model.pth", "--count", "20",
                      "--out", tmp_path / "p.png")
    assert result.returncode == 0, result.stderr
    lines = prediction_lines(result.stdout)
    assert len(captions) == len(lines) == 20
    for caption, line in zip(captions, lines):
        said = re.fullmatch(r"pred (\d) \((\d+\.\d)%\)", caption)
        assert said and said[1] == line[2], (caption, line[0])
        assert abs(float(said[2]) - float(line[4])) <= 0.051, (caption, line[0])
