"""confidence.py: probabilities that mean what they say, and "no digit here", measured with the
shipped model on MNIST's test images, generated photos and generated non-digits."""
import pytest
import torch

import confidence
import datasets
import engine
import handwriting
import nondigits
import outliers
from checkpoint import load_checkpoint, model_from_checkpoint
from conftest import ROOT

TEST_IMAGES, TEST_LABELS = datasets.load(ROOT / "data", "test")


def test_the_fitted_temperature_is_the_one_that_made_the_labels():
    """Labels drawn from softmax(logits / 0.5) give back a temperature near 0.5."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 10, generator=generator) * 2
    labels = torch.multinomial((logits / 0.5).softmax(1), 1, generator=generator).squeeze(1)
    assert abs(confidence.fit_temperature(logits, labels) - 0.5) < 0.02


@pytest.fixture(scope="module")
def shipped(reader):
    checkpoint = load_checkpoint(reader)
    model = model_from_checkpoint(checkpoint, torch.device("cpu"), reader)
    return checkpoint, confidence.Reader(model, checkpoint)


def normalized(checkpoint, pictures: torch.Tensor) -> torch.Tensor:
    return ((pictures - checkpoint["mean"]) / checkpoint["std"]).unsqueeze(1)


def test_calibrated_probabilities_mean_what_they_say(shipped):
    checkpoint, reader = shipped
    x = normalized(checkpoint, TEST_IMAGES.float() / 255)
    logits, _ = confidence.logits_and_maps(reader.model, x)

    def error(probabilities):
        return confidence.calibration_error(confidence.reliability(probabilities, TEST_LABELS))
    before = error(logits.softmax(1))
    after = error(reader.probabilities(x))
    assert before > 0.05 and after <= 0.005, (before, after)


@pytest.mark.parametrize("sharpness", [0.3, 1.0, 3.0])
def test_the_calibration_error_agrees_with_torchmetrics(sharpness):
    """The reliability diagram's bins give the same error as torchmetrics' implementation, on
    probabilities from unsure to sure, some right and some wrong. (A confidence of exactly 1.0,
    which torchmetrics bins on its own, falls in the top bin here.)"""
    from torchmetrics.functional.classification import multiclass_calibration_error
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(10, (5000,), generator=generator)
    logits = torch.randn(5000, 10, generator=generator) * sharpness
    logits[torch.arange(5000), labels] += torch.rand(5000, generator=generator) * 3 * sharpness
    probabilities = logits.softmax(1)
    expected = float(multiclass_calibration_error(probabilities, labels, 10, n_bins=15))
    ours = confidence.calibration_error(confidence.reliability(probabilities, labels))
    assert ours == pytest.approx(expected, abs=1e-6)


def test_few_test_digits_are_refused(shipped):
    checkpoint, reader = shipped
    readings = reader.read(normalized(checkpoint, TEST_IMAGES.float() / 255))
    refused = sum(not r.digit for r in readings) / len(readings)
    assert refused <= 0.01, refused


@pytest.fixture(scope="module")
def nondigit_readings(shipped):
    """(kind, refused) for every generated non-digit; a blank one is refused before the model."""
    checkpoint, reader = shipped
    results = []
    for kind, picture in nondigits.nondigit_set(per_kind=20, seed=1):
        try:
            prepared = handwriting.prepare(picture)
        except handwriting.ImageProblem:
            results.append((kind, True))
            continue
        results.append((kind, not reader.read(normalized(checkpoint, prepared[None]))[0].digit))
    return results


def test_pictures_without_a_digit_are_refused(nondigit_readings):
    """At least 90 % of all the non-digits; docs/trust.md has each kind's share."""
    assert len(nondigits.KINDS) >= 10
    refused = sum(r for _, r in nondigit_readings)
    assert refused >= 0.9 * len(nondigit_readings), refused
    for kind in ("noise", "blurred texture", "checkerboard", "dot", "hatching"):
        assert all(r for k, r in nondigit_readings if k == kind), kind


def test_the_rule_is_fitted_on_the_training_digits_alone(shipped):
    """The drawn non-digits among the training pictures belong to no class's mean."""
    checkpoint, reader = shipped
    digits = normalized(checkpoint, TEST_IMAGES[:1000].float() / 255), TEST_LABELS[:1000]
    drawn = normalized(checkpoint, outliers.drawings(200, seed=0).float() / 255)
    val = normalized(checkpoint, TEST_IMAGES[1000:2000].float() / 255), TEST_LABELS[1000:2000]
    alone = confidence.fit(reader.model, digits, val)
    labels = torch.cat([digits[1], torch.full((200,), engine.NO_CLASS)])
    mixed = confidence.fit(reader.model, (torch.cat([digits[0], drawn]), labels), val)
    for name in ("means", "precision", "typical_distance"):
        assert torch.equal(alone[name], mixed[name]), name


def test_validation_images_without_a_mistake_fit_no_temperature(shipped):
    """Every validation image read right: the likelihood grows without end as the temperature
    falls, and a fit would make every answer 100 % sure. Too few images cannot place the limit
    of refusals. Neither calibrates."""
    checkpoint, reader = shipped
    x = normalized(checkpoint, TEST_IMAGES[:2000].float() / 255)
    right = reader.probabilities(x).argmax(1) == TEST_LABELS[:2000]
    train_split = x[:1000], TEST_LABELS[:1000]
    held, labels, right = x[1000:], TEST_LABELS[1000:2000], right[1000:]
    val = held[right][:500], labels[right][:500]
    with pytest.raises(confidence.CannotCalibrate, match="no mistake among the 500"):
        confidence.fit(reader.model, train_split, val)
    with pytest.raises(confidence.CannotCalibrate, match="only 99 validation images"):
        confidence.fit(reader.model, train_split, (held[:99], labels[:99]))
    assert not right.all()
    with_a_mistake = (torch.cat([val[0], held[~right][:1]]),
                      torch.cat([val[1], labels[~right][:1]]))
    assert confidence.fit(reader.model, train_split, with_a_mistake)["temperature"] > 0.1


def test_letters_drawn_upright_and_large_are_refused(shipped):
    """As a person tries the page: a network that has seen only digits read A, H and Y as a
    sure 4 and R as an 8; the drawn non-digits of training (outliers.py) teach it otherwise."""
    checkpoint, reader = shipped
    letters = list(nondigits.STROKES)
    prepared = torch.stack([handwriting.prepare(nondigits.upright_letter(letter))
                            for letter in letters])
    read = reader.read(normalized(checkpoint, prepared))
    assert [letter for letter, r in zip(letters, read) if r.digit] == []


def test_a_checkpoint_without_calibration_reads_with_temperature_one(shipped):
    checkpoint, reader = shipped
    plain = confidence.Reader(reader.model, {k: v for k, v in checkpoint.items()
                                             if k != "calibration"})
    x = normalized(checkpoint, TEST_IMAGES[:50].float() / 255)
    logits, _ = confidence.logits_and_maps(reader.model, x)
    readings = plain.read(x)
    assert not plain.calibrated and plain.temperature == 1.0
    assert all(r.digit for r in readings)
    assert torch.allclose(torch.stack([r.probabilities for r in readings]), logits.softmax(1))


def test_the_rule_is_fitted_at_the_end_of_training(smoke_run):
    save_dir, result = smoke_run
    calibration = load_checkpoint(save_dir / "best_model.pth")["calibration"]
    assert "probabilities calibrated on the validation images: temperature" in result.stdout
    assert 0.1 < calibration["temperature"] < 3
    assert calibration["means"].shape == (10, 400) and calibration["precision"].shape == (400, 400)
    assert len(calibration["typical_distance"]) == len(calibration["typical_doubt"]) > 100
