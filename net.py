"""LeNet-5 as published (LeCun et al., 1998): tanh activations and average pooling."""
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class WholeMapConv2d(nn.Conv2d):
    """A convolution whose kernels cover the whole input map, as LeNet-5's C5 does (5x5 kernels on
    5x5 maps). Each output is then one dot product with the whole input, which the paper notes
    amounts to a full connection; this computes it as that matrix product, which ran a training
    step 11-13 % faster than the convolution on the CPU (docs/speed.md, "On the CPU"). The
    weights and their shape are the convolution's, and so are the results, to rounding.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        covers_whole_map = (x.shape[-2:] == self.kernel_size and self.padding == (0, 0)
                            and self.dilation == (1, 1) and self.groups == 1)
        if not covers_whole_map:
            return super().forward(x)      # the kernels slide (or are split): a real convolution
        # Flattened in (height, width, channel) order: the order channels_last tensors already
        # have, so neither flattening copies.
        inputs = x.permute(0, 2, 3, 1).flatten(1)
        weight = self.weight.permute(0, 2, 3, 1).flatten(1)
        return F.linear(inputs, weight, self.bias)[:, :, None, None]


class LeNet5(nn.Module):
    """28x28 grayscale digit in, 10 logits out; 61,706 parameters.

    The layers sit in one ``nn.Sequential`` named ``net`` in this order so that a
    ``state_dict`` saved by the widely copied tutorial code (keys ``net.0.weight``,
    ``net.3.weight``, ``net.6.weight``, ``net.9.weight``, ``net.11.weight``) loads unchanged.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            # padding 2 makes the 28x28 MNIST digit the 32x32 input of the paper
            nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Tanh(),    # 6x28x28
            nn.AvgPool2d(kernel_size=2, stride=2),                    # 6x14x14
            nn.Conv2d(6, 16, kernel_size=5), nn.Tanh(),               # 16x10x10
            nn.AvgPool2d(kernel_size=2, stride=2),                    # 16x5x5
            WholeMapConv2d(16, 120, kernel_size=5), nn.Tanh(),        # 120x1x1
            nn.Flatten(),                                             # 120
            nn.Linear(120, 84), nn.Tanh(),                            # 84
            nn.Linear(84, num_classes),                               # logits
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# Where each of the paper's layers ends in ``LeNet5.net``: the outputs a person looks at (after
# tanh for C1, C3, C5 and F6).
LAYERS = {"C1": 1, "S2": 2, "C3": 4, "S4": 5, "C5": 7, "F6": 10, "output": 11}
# The layers whose kernels slide over maps, by the position of their convolution.
KERNELS = {"C1": 0, "C3": 3}


@contextmanager
def watching(model: LeNet5, names=tuple(LAYERS)) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, ``seen[name]`` holds that layer's output in the latest forward pass.
    Forward hooks on the model's own submodules: the values it computed, not a copy of its
    forward pass that could drift from it."""
    seen = {}

    def keep(name):
        return lambda module, inputs, output: seen.__setitem__(name, output.detach())
    hooks = [model.net[LAYERS[name]].register_forward_hook(keep(name)) for name in names]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def look_inside(model: LeNet5, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every layer's output (``LAYERS``) for the normalized images ``x``, on the CPU, with the
    model in eval mode."""
    was_training = model.training
    model.eval()
    with watching(model) as seen:
        model(x)
    model.train(was_training)
    return {name: output.float().cpu() for name, output in seen.items()}


def kernels(model: LeNet5) -> dict[str, torch.Tensor]:
    """The learned kernels of C1 (6 x 1 x 5 x 5) and C3 (16 x 6 x 5 x 5), on the CPU."""
    return {name: model.net[i].weight.detach().float().cpu() for name, i in KERNELS.items()}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    model = LeNet5()
    x = torch.zeros(1, 1, 28, 28)
    print(f"{'layer':<28} output shape")
    print(f"{'input':<28} {tuple(x.shape)}")
    for index, layer in enumerate(model.net):
        x = layer(x)
        print(f"{f'net.{index} {layer.__class__.__name__}':<28} {tuple(x.shape)}")
    print(f"parameters: {count_parameters(model):,}")
