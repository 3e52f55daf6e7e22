import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import ROOT
import net
from net import LeNet5, WholeMapConv2d, count_parameters

TUTORIAL_KEYS = {f"net.{i}.{kind}" for i in (0, 3, 6, 9, 11) for kind in ("weight", "bias")}


def test_output_shape_parameter_count_and_finite_logits():
    model = LeNet5()
    logits = model(torch.randn(5, 1, 28, 28))
    assert logits.shape == (5, 10)
    assert torch.isfinite(logits).all()
    assert count_parameters(model) == 61_706


def test_layers_follow_the_1998_design():
    kinds = [nn.Conv2d, nn.Tanh, nn.AvgPool2d, nn.Conv2d, nn.Tanh, nn.AvgPool2d,
             nn.Conv2d, nn.Tanh, nn.Flatten, nn.Linear, nn.Tanh, nn.Linear]
    layers = list(LeNet5().net)
    assert len(layers) == len(kinds)
    assert all(isinstance(layer, kind) for layer, kind in zip(layers, kinds))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("side, groups", [(5, 1), (7, 1), (5, 4)])   # 7 or 4: a real convolution
def test_whole_map_convolution_computes_the_convolution(layout, side, groups):
    torch.manual_seed(0)
    stock = nn.Conv2d(16, 120, kernel_size=5, groups=groups)
    whole = WholeMapConv2d(16, 120, kernel_size=5, groups=groups)
    whole.load_state_dict(stock.state_dict())
    stock, whole = stock.to(memory_format=layout), whole.to(memory_format=layout)
    x = torch.randn(8, 16, side, side).to(memory_format=layout).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    expected, got = stock(x), whole(x2)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    got.backward(grad)
    assert torch.allclose(x2.grad, x.grad, atol=1e-5)
    for name in ("weight", "bias"):
        assert torch.allclose(getattr(whole, name).grad, getattr(stock, name).grad, atol=1e-4)


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


@pytest.mark.processes
def test_running_net_py_prints_shapes_and_parameter_count():
    result = subprocess.run([sys.executable, str(ROOT / "net.py")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "(1, 6, 28, 28)" in result.stdout and "(1, 120, 1, 1)" in result.stdout
    assert "(1, 10)" in result.stdout
    assert "parameters: 61,706" in result.stdout


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_look_inside_shows_what_the_model_computes(layout):
    """Every layer's output comes from the model itself: the last is its logits, each pooled
    map is the 2x2 average of the one before, C5 is tanh of C5's weights on S4; nothing stays
    hooked afterwards."""
    torch.manual_seed(0)
    model = LeNet5().to(memory_format=layout).train()
    x = torch.randn(3, 1, 28, 28).to(memory_format=layout)
    seen = net.look_inside(model, x)
    assert model.training, "the model is put back as it was"
    assert {name: tuple(v.shape) for name, v in seen.items()} == {
        "C1": (3, 6, 28, 28), "S2": (3, 6, 14, 14), "C3": (3, 16, 10, 10), "S4": (3, 16, 5, 5),
        "C5": (3, 120, 1, 1), "F6": (3, 84), "output": (3, 10)}
    assert torch.equal(seen["output"], model.eval()(x))
    assert torch.allclose(seen["S2"], F.avg_pool2d(seen["C1"], 2))
    assert torch.allclose(seen["S4"], F.avg_pool2d(seen["C3"], 2))
    c5 = model.net[6]
    assert torch.allclose(seen["C5"], torch.tanh(F.conv2d(seen["S4"], c5.weight, c5.bias)),
                          atol=1e-6)
    assert all(not layer._forward_hooks for layer in model.net)
    kernels = net.kernels(model)
    assert torch.equal(kernels["C1"], model.net[0].weight) and kernels["C3"].shape == (16, 6, 5, 5)
