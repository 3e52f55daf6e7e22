import subprocess
import sys

import torch
import torch.nn.functional as F

from conftest import ROOT
from net import LeNet5, count_parameters

TUTORIAL_KEYS = {f"net.{i}.{kind}" for i in (0, 3, 6, 9, 11) for kind in ("weight", "bias")}


def test_output_shape_parameter_count_and_finite_logits():
    model = LeNet5()
    logits = model(torch.randn(5, 1, 28, 28))
    assert logits.shape == (5, 10)
    assert torch.isfinite(logits).all()
    assert count_parameters(model) == 61_706


def test_layers_follow_the_1998_design():
    kinds = [type(layer).__name__ for layer in LeNet5().net]
    assert kinds == ["Conv2d", "Tanh", "AvgPool2d", "Conv2d", "Tanh", "AvgPool2d",
                     "Conv2d", "Tanh", "Flatten", "Linear", "Tanh", "Linear"]


def test_every_parameter_receives_a_gradient():
    torch.manual_seed(0)
    model = LeNet5()
    F.cross_entropy(model(torch.randn(8, 1, 28, 28)), torch.arange(8)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_tutorial_state_dict_keys_load_unchanged():
    source = LeNet5()
    state = {k: v.clone() for k, v in source.state_dict().items()}
    assert set(state) == TUTORIAL_KEYS
    fresh = LeNet5()
    fresh.load_state_dict(state)     # strict: any renamed or reshaped layer fails here
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(fresh(x), source(x))


def test_running_net_py_prints_shapes_and_parameter_count():
    result = subprocess.run([sys.executable, str(ROOT / "net.py")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "(1, 6, 28, 28)" in result.stdout and "(1, 120, 1, 1)" in result.stdout
    assert "(1, 10)" in result.stdout
    assert "parameters: 61,706" in result.stdout
