"""The drawn non-digits of outlier exposure, and the loss that trains them to no class."""
import random

import pytest
import torch
import torch.nn.functional as F

import engine
import outliers
from conftest import check_mnist_like


@pytest.mark.parametrize("name", [*outliers.LETTERS, *outliers.SHAPES])
def test_every_figure_is_framed_as_mnist_frames_a_digit(name):
    figure = (outliers.LETTERS | outliers.SHAPES)[name]
    rng = random.Random(0)
    for _ in range(5):      # turned, sheared, squashed and wobbled each time
        check_mnist_like(outliers.drawing(rng, figure), peak=0.7)


def test_the_drawings_vary_and_are_the_same_for_the_same_seed():
    drawn = outliers.drawings(300, seed=4)
    assert drawn.shape == (300, 28, 28) and drawn.dtype == torch.uint8
    assert torch.equal(drawn, outliers.drawings(300, seed=4))
    assert not torch.equal(drawn, outliers.drawings(300, seed=5))
    assert len({bytes(x.numpy()) for x in drawn}) == 300
    for x in drawn[:50]:
        check_mnist_like(x.float() / 255, peak=0.7)
    # Letters, shapes and scribbles all come: a scribble fills far more of its frame than a
    # letter, a letter's strokes are its frame's size or smaller.
    ink = (drawn > 128).float().mean((1, 2))
    assert ink.max() > 2 * ink.median()
    assert outliers.drawings(0, seed=4).shape == (0, 28, 28)


def test_a_picture_of_no_class_is_trained_towards_the_uniform_distribution():
    logits = torch.randn(6, 10, requires_grad=True)
    y = torch.tensor([3, engine.NO_CLASS, 7, engine.NO_CLASS, 0, 9])
    loss = engine._loss(logits, y, label_smoothing=0.1)
    labelled = F.cross_entropy(logits[y >= 0], y[y >= 0], label_smoothing=0.1, reduction="sum")
    uniform = -logits[y < 0].log_softmax(1).mean(1).sum()
    assert torch.allclose(loss, (labelled + engine.NO_CLASS_WEIGHT * uniform) / 6)
    # Without pictures of no class it is the plain cross-entropy.
    digits = torch.tensor([3, 1, 7, 2, 0, 9])
    assert torch.allclose(engine._loss(logits, digits, 0.1),
                          F.cross_entropy(logits, digits, label_smoothing=0.1))
    # Its gradient vanishes at equal logits, whatever their level, and only there.
    level = torch.full((1, 10), 2.5, requires_grad=True)
    engine._loss(level, torch.tensor([engine.NO_CLASS]), 0.0).backward()
    assert level.grad.abs().max() < 1e-7
    loss.backward()
    assert logits.grad[1].abs().max() > 1e-3


def test_training_accuracy_counts_the_labelled_pictures_only():
    torch.manual_seed(0)
    model = engine.new_model(torch.device("cpu"))
    optimizer = engine.new_optimizer(model, "sgd", lr=0.0)       # the weights stay as they are
    x = torch.randn(40, 1, 28, 28)
    y = torch.cat([torch.randint(0, 10, (30,)), torch.full((10,), engine.NO_CLASS)])
    result = engine.train_one_epoch(model, [(x[:20], y[:20]), (x[20:], y[20:])], optimizer)
    with torch.no_grad():
        read = model.eval()(x).argmax(1)
    assert result.total == 30
    assert result.correct == int((read[:30] == y[:30]).sum())
    expected = sum(engine._loss(model(part), labels, 0.0).item() * 20
                   for part, labels in [(x[:20], y[:20]), (x[20:], y[20:])]) / 40
    assert result.loss == pytest.approx(expected, rel=1e-5)
