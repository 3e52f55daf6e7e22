"""The training core: device switch, accuracy over a split, evaluation mode, EMA, loss,
teachers."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import datasets
import engine
from checkpoint import load_checkpoint, model_from_checkpoint
from conftest import ROOT
from net import LeNet5

CPU = torch.device("cpu")


def test_device_switch():
    assert engine.pick_device("cpu") == CPU
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert engine.pick_device("auto").type == expected
    with pytest.raises(engine.DeviceError, match="unknown device 'tpu'"):
        engine.pick_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_forcing_a_missing_device_is_refused():
    with pytest.raises(engine.DeviceError, match="'cuda' is not available"):
        engine.pick_device("cuda")


class AlwaysZero(nn.Module):
    """Predicts class 0 for everything."""
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([5.0] + [0.0] * 9))

    def forward(self, x):
        return self.bias.expand(len(x), 10)


def test_accuracy_is_counted_over_the_split_not_averaged_over_batches():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 0, 1])   # batches of 4, 4, 2
    images = torch.zeros(10, 28, 28, dtype=torch.uint8)
    model = AlwaysZero().train()
    result = engine.evaluate(model, datasets.Batches(images, labels, 4, CPU))
    assert (result.correct, result.total, result.accuracy) == (5, 10, 0.5)
    assert result.confusion.tolist()[0][0] == 5 and result.confusion.tolist()[1][0] == 5
    assert model.training                       # evaluate puts the mode back
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 0])       # batches of 4, 4, 1
    result = engine.evaluate(model, datasets.Batches(images[:9], labels, 4, CPU))
    assert result.accuracy == 5 / 9              # batch mean would say (1 + 0 + 1) / 3


def test_evaluate_runs_in_eval_mode_without_autograd():
    seen = {}

    class Spy(AlwaysZero):
        def forward(self, x):
            seen["training"], seen["grad"] = self.training, torch.is_grad_enabled()
            return super().forward(x)

    engine.evaluate(Spy().train(), datasets.Batches(torch.zeros(3, 28, 28, dtype=torch.uint8),
                                                    torch.zeros(3, dtype=torch.long), 3, CPU))
    assert seen == {"training": False, "grad": False}


def test_training_puts_the_model_back_in_train_mode_and_lowers_the_loss():
    torch.manual_seed(0)
    images, labels = datasets.load(ROOT / "data", "train")
    batches = datasets.Batches(images[:256], labels[:256], 32, CPU, shuffle=True,
                               generator=torch.Generator().manual_seed(0))
    model = LeNet5().eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = [engine.train_one_epoch(model, batches, optimizer).loss for _ in range(5)]
    assert model.training
    assert losses[-1] < losses[0] * 0.5, losses


@pytest.mark.parametrize("updates, weight", [(0, 1 - 2 / 11), (100, 0.1)])
def test_ema_follows_the_trained_weights_by_its_decay(updates, weight):
    """A fresh average mostly copies the weights (warm-up); later it moves by 1 - decay."""
    torch.manual_seed(0)
    model = LeNet5()
    ema = engine.EMA(model, decay=0.9, updates=updates)
    before = [p.detach().clone() for p in model.parameters()]
    one_batch = datasets.Batches(torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8),
                                 torch.arange(8), 8, CPU)
    engine.train_one_epoch(model, one_batch, torch.optim.SGD(model.parameters(), lr=0.1),
                           ema=ema)
    assert ema.updates == updates + 1
    for old, new, averaged in zip(before, model.parameters(), ema.model.parameters()):
        assert not torch.equal(old, new)                     # the step moved the weights
        assert torch.allclose(averaged, (1 - weight) * old + weight * new.detach(), atol=1e-7)
        assert not averaged.requires_grad


def test_label_smoothing_is_the_training_loss():
    torch.manual_seed(0)
    model = LeNet5()
    x = torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (16,))
    batches = datasets.Batches(x, y, 16, CPU)
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)     # the loss of unchanged weights
    with torch.no_grad():
        logits = model(next(iter(batches))[0])
    for smoothing in (0.0, 0.2):
        loss = engine.train_one_epoch(model, batches, frozen, label_smoothing=smoothing).loss
        expected = F.cross_entropy(logits, y, label_smoothing=smoothing).item()
        assert loss == pytest.approx(expected, rel=1e-6), smoothing


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_digits_alone_train_exactly_as_the_loss_that_handles_no_class(smoothing):
    """Data without NO_CLASS pictures take the plain cross-entropy: the same weights to the last
    bit as the loss that also handles them (which batches without ``labels`` always take)."""
    images, labels = datasets.load(ROOT / "data", "train")

    class Unlabelled:       # the same batches, no ``labels`` to check
        def __init__(self, batches):
            self.batches = batches

        def __iter__(self):
            return iter(self.batches)

    runs = []
    for wrap in (lambda batches: batches, Unlabelled):
        torch.manual_seed(0)
        model = engine.new_model(CPU)
        batches = datasets.Batches(images[:640], labels[:640], 64, CPU, shuffle=True,
                                   augment=1.0, generator=torch.Generator().manual_seed(0))
        result = engine.train_one_epoch(model, wrap(batches), engine.new_optimizer(
            model, "adamw", 1e-3), label_smoothing=smoothing)
        runs.append((result, [p.detach() for p in model.parameters()]))
    (plain, plain_weights), (general, general_weights) = runs
    assert plain == general and plain.total == 640
    assert all(map(torch.equal, plain_weights, general_weights))


def test_short_training_on_real_mnist_reaches_real_accuracy():
    torch.manual_seed(0)
    images, labels = datasets.load(ROOT / "data", "train")
    test_images, test_labels = datasets.load(ROOT / "data", "test")
    batches = datasets.Batches(images[:6000], labels[:6000], 64, CPU, shuffle=True,
                               generator=torch.Generator().manual_seed(0))
    model = LeNet5()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(2):
        engine.train_one_epoch(model, batches, optimizer)
    result = engine.evaluate(model, datasets.Batches(test_images[:2000], test_labels[:2000],
                                                     500, CPU))
    assert result.total == 2000
    assert result.accuracy >= 0.90, result.accuracy


def test_a_student_learns_its_teachers_readings_not_only_the_labels(reader):
    """A teacher that reads every digit as the next one (a trained model with its outputs
    rotated): with the whole loss its share, the student reads as the teacher does; with none,
    as the labels say. Both from the same start, on the same batches."""
    teacher = model_from_checkpoint(load_checkpoint(reader), CPU, reader)
    last = teacher.net[-1]
    with torch.no_grad():
        last.weight.copy_(last.weight.roll(1, 0))
        last.bias.copy_(last.bias.roll(1, 0))
    images, labels = datasets.load(ROOT / "data", "train")
    test_images, test_labels = datasets.load(ROOT / "data", "test")
    test = datasets.Batches(test_images[:1000], test_labels[:1000], 500, CPU)
    for share, reads_as in ((1.0, (test_labels[:1000] + 1) % 10), (0.0, test_labels[:1000])):
        torch.manual_seed(0)
        student = LeNet5()
        teachers = engine.Teachers([teacher], [(1, 0)], share, temperature=2.0)
        batches = datasets.Batches(images[:3000], labels[:3000], 64, CPU, shuffle=True,
                                   generator=torch.Generator().manual_seed(0))
        optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
        engine.train_one_epoch(student, batches, optimizer, teachers=teachers)
        agree = engine.evaluate(student, datasets.Batches(test_images[:1000], reads_as, 500,
                                                          CPU)).accuracy
        assert agree >= 0.8, (share, agree)    # 0.88 and 0.87 when written
    assert engine.evaluate(teacher, test).accuracy < 0.05     # the teacher really is wrong
