"""How far to trust a reading: probabilities that mean what they say, and "no digit here".

Calibration (Guo et al. 2017): label smoothing leaves the network underconfident (every sure
answer near 91 %), so the logits are divided by one temperature, fitted on the validation
split by minimizing the negative log-likelihood.

"No digit here": the network names a digit for anything, a scribble or a letter included. Two
things tell a digit from the rest: how typical the picture's S4 maps (the 16 5x5 maps before C5)
are of the digit class they are closest to (a Mahalanobis distance to the class means of the
training images, Lee et al. 2018), and how sure the calibrated reading is. Each is turned into
the share of validation digits that look at least as unusual (an empirical p-value), and the two
are combined by Fisher's method; a picture less typical than ``REFUSED_DIGITS`` of the
validation digits is refused. docs/trust.md has the choice of the rule and its measurements.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import datasets
import engine
from checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from net import LeNet5, look_inside, watching

REFUSED_DIGITS = 0.01     # share of validation digits that the rule refuses, by construction
# Fewer validation images cannot place the limit that refuses REFUSED_DIGITS of them.
MIN_VALIDATION = round(1 / REFUSED_DIGITS)
TYPICAL_LAYER = "S4"      # the pooled C3 maps (16 x 5 x 5)
FIT_BATCH = 2000


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T that minimizes the mean NLL of softmax(logits / T)."""
    logits, labels = logits.detach().float().cpu(), labels.cpu()
    log_t = torch.zeros((), requires_grad=True)      # T = exp(log_t) stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss
    optimizer.step(closure)
    return float(log_t.detach().exp())


@torch.no_grad()
def logits_and_maps(model: LeNet5, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and S4 maps of normalized images ``x``, in batches, on the CPU."""
    was_training = model.training
    model.eval()
    logits, maps = [], []
    with watching(model, [TYPICAL_LAYER]) as seen:
        for batch in x.split(FIT_BATCH):
            logits.append(model(batch).float().cpu())
            maps.append(seen[TYPICAL_LAYER].flatten(1).float().cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(maps)


def _distance(maps: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """The squared Mahalanobis distance of each row of ``maps`` to the nearest class mean."""
    distances = []
    for rows in maps.split(FIT_BATCH):
        d = rows[:, None, :] - means[None]
        distances.append(torch.einsum("nci,ij,ncj->nc", d, precision, d).min(1).values)
    return torch.cat(distances)


def _unusual(score: torch.Tensor, typical: torch.Tensor) -> torch.Tensor:
    """-log of the share of validation digits whose score (sorted in ``typical``) is at least
    as high: 0 for the most ordinary, growing as the score leaves the digits behind."""
    n = len(typical)
    above = n - torch.searchsorted(typical, score.contiguous())
    return -torch.log((above + 1) / (n + 1))


class CannotCalibrate(Exception):
    """The validation images cannot calibrate this model; the message says why."""


def fit(model: LeNet5, train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """Everything a reading needs to be trusted, from normalized (images, labels) of the
    training and validation splits: the temperature, the S4 class means and shared precision
    of the training digits (pictures of ``engine.NO_CLASS`` left out), and the validation
    digits' scores that set the refusal limit.
    Only tensors and floats, so that a checkpoint holds it. ``CannotCalibrate`` when the
    validation images are too few to place the limit, or hold no mistake."""
    n = len(val[1])
    if n < MIN_VALIDATION:
        raise CannotCalibrate(f"only {n} validation image{'s' * (n != 1)}, and calibrating "
                              f"takes {MIN_VALIDATION}: hold out more with --val-size or a "
                              f"larger --subset")
    digits = train[1] != engine.NO_CLASS      # not the drawn non-digits of training
    train_logits, train_maps = logits_and_maps(model, train[0][digits])
    labels = train[1][digits].cpu()
    classes = train_logits.shape[1]
    means = torch.stack([train_maps[labels == c].mean(0) for c in range(classes)])
    centred = train_maps - means[labels]
    covariance = centred.T @ centred / len(centred)
    # A little of the average variance on the diagonal: S4 has dimensions that barely vary.
    ridge = 1e-3 * covariance.diagonal().mean()
    precision = torch.linalg.inv(covariance + ridge * torch.eye(len(covariance)))

    val_logits, val_maps = logits_and_maps(model, val[0])
    if (val_logits.argmax(1) == val[1].cpu()).all():
        # The likelihood then only grows as the temperature falls: every answer would be 100 %.
        raise CannotCalibrate(f"no mistake among the {n} validation images to fit a "
                              f"temperature to: hold out more with --val-size")
    temperature = fit_temperature(val_logits, val[1])
    calibration = {"temperature": temperature, "means": means, "precision": precision}
    distance, doubt = _distance(val_maps, means, precision), _doubt(val_logits, temperature)
    calibration["typical_distance"] = distance.sort().values
    calibration["typical_doubt"] = doubt.sort().values
    scores = _combined(calibration, distance, doubt)    # each image's pair, not sorted apart
    calibration["limit"] = float(scores.quantile(1 - REFUSED_DIGITS))
    return calibration


def _doubt(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return 1 - (logits / temperature).softmax(1).max(1).values


def _combined(calibration: dict, distance: torch.Tensor, doubt: torch.Tensor) -> torch.Tensor:
    """Fisher's combination of the two p-values (as -log p, summed)."""
    return (_unusual(distance, calibration["typical_distance"]) +
            _unusual(doubt, calibration["typical_doubt"]))


@dataclass
class Reading:
    probabilities: torch.Tensor    # calibrated, one per class
    digit: bool                    # False: the picture does not look like a digit

    @property
    def best(self) -> int:
        return int(self.probabilities.argmax())

    @property
    def sure(self) -> float:
        return float(self.probabilities.max())


class Reader:
    """A checkpoint's model with its calibration: normalized images in, ``Reading``s out.
    A checkpoint without one (older runs, a tutorial state_dict, too few validation images or
    none: its ``uncalibrated`` says why) reads with temperature 1 and refuses nothing but blank
    pictures; ``calibrated`` says which."""

    def __init__(self, model: LeNet5, checkpoint: dict):
        self.model, self.checkpoint = model, checkpoint
        self.calibration = checkpoint.get("calibration")
        self.calibrated = self.calibration is not None
        self.temperature = self.calibration["temperature"] if self.calibrated else 1.0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def normalized(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] (H x W or N x 1 x H x W) as the model's input: one batch on its
        device, normalized as the checkpoint's training images were."""
        x = pixels if pixels.dim() == 4 else pixels[None, None]
        return ((x - self.checkpoint["mean"]) / self.checkpoint["std"]).to(self.device)

    def batches(self, images: torch.Tensor, labels: torch.Tensor) -> datasets.Batches:
        """Images (N x 28 x 28, uint8) and their labels in evaluation batches on the model's
        device, normalized as the checkpoint's training images were."""
        return datasets.Batches(images, labels, engine.EVAL_BATCH_SIZE, self.device,
                                mean=self.checkpoint["mean"], std=self.checkpoint["std"])

    def test_batches(self, data_dir: str | Path) -> datasets.Batches:
        """The test images of the set the checkpoint was trained on, as ``batches``."""
        return self.batches(*datasets.load(data_dir, "test", self.checkpoint["dataset"]))

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities of normalized images (on the CPU)."""
        logits, _ = logits_and_maps(self.model, x)
        return (logits / self.temperature).softmax(1)

    def read(self, x: torch.Tensor) -> list[Reading]:
        """The readings of normalized images."""
        return self.judge(*logits_and_maps(self.model, x))

    def read_inside(self, x: torch.Tensor) -> tuple[list[Reading], dict[str, torch.Tensor]]:
        """The readings of normalized images, and every layer's output on the way there."""
        outputs = look_inside(self.model, x)
        return self.judge(outputs["output"], outputs[TYPICAL_LAYER].flatten(1)), outputs

    def judge(self, logits: torch.Tensor, maps: torch.Tensor) -> list[Reading]:
        """The readings of images whose logits and S4 maps are already computed."""
        probabilities = (logits / self.temperature).softmax(1)
        if not self.calibrated:
            return [Reading(p, True) for p in probabilities]
        c = self.calibration
        scores = _combined(c, _distance(maps, c["means"], c["precision"]),
                           _doubt(logits, self.temperature))
        return [Reading(p, float(s) <= c["limit"]) for p, s in zip(probabilities, scores)]


def open_reader(path: str | Path, device: torch.device, digits_for: str | None = None
                ) -> Reader:
    """The checkpoint at ``path``, its model on ``device``, ready to read. ``digits_for`` names
    a reader of handwritten digits (the page, ``--image``), which refuses a model of clothing or
    kana. A checkpoint without calibration is said once, on stderr."""
    checkpoint = load_checkpoint(path)
    dataset = datasets.DATASETS[checkpoint["dataset"]]
    if digits_for and not dataset.digits:
        raise CheckpointError(f"{path} was trained on {dataset.title}; {digits_for} reads "
                              f"handwritten digits, so it needs a model trained on MNIST")
    reader = Reader(model_from_checkpoint(checkpoint, device, path), checkpoint)
    if not reader.calibrated:
        why = checkpoint.get("uncalibrated", "saved before it, or trained with --val-size 0")
        print(f"note: {path} holds no calibration ({why}): its probabilities are the "
              f"network's own, and no picture is refused as not a digit", file=sys.stderr)
    return reader


def reliability(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 15
                ) -> list[tuple[float, float, int]]:
    """Per confidence bin with images in it: (mean confidence, accuracy, count)."""
    confidence, predicted = probabilities.max(1)
    right = (predicted == labels).float()
    which = (confidence * bins).long().clamp(max=bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            rows.append((float(confidence[inside].mean()), float(right[inside].mean()),
                         int(inside.sum())))
    return rows


def calibration_error(rows: list[tuple[float, float, int]]) -> float:
    """Expected calibration error (top-label, L1) from ``reliability``'s rows: the gap between
    accuracy and mean confidence, weighted by each bin's share of the images."""
    return (sum(count * abs(accuracy - mean_confidence)
                for mean_confidence, accuracy, count in rows) / sum(row[2] for row in rows))
