"""Export a checkpoint to ONNX for apps, checked against ONNX Runtime on the whole test set.

    python export.py                                   # save_model/best_model.pth
    python export.py --checkpoint other.pth --out other.onnx

The file takes raw pixels: N x 1 x 28 x 28 floats in [0, 1], as the training images are (a
light digit on black for MNIST; ``handwriting.py`` prepares a photo that way). The
normalization is inside the graph, so an app needs no constants; the class names, the data set
and the accuracies are in the model's metadata.
"""
import cli

if __name__ == "__main__":    # importing torch takes seconds: a stop during it ends quietly too
    cli.stop_quietly_while_starting()

import argparse
import json
import warnings
from pathlib import Path

import onnx
import onnxruntime
import torch
from torch import nn

import confidence
import datasets
import engine
from atomic import write_atomic

# float32 sums in another order: a difference of 1e-4 in a logit would be a real mismatch.
MAX_LOGIT_DIFFERENCE = 1e-4


class ExportError(cli.Problem):
    """The exported graph does not compute what the checkpoint does."""


class RawPixels(nn.Module):
    """The model as an app calls it: raw pixels in [0, 1] in; the logits and the calibrated
    probabilities (softmax of the logits / the checkpoint's temperature) out."""

    def __init__(self, model: nn.Module, mean: float, std: float, temperature: float):
        super().__init__()
        self.model, self.mean, self.std = model, mean, std
        self.temperature = temperature

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model((pixels - self.mean) / self.std)
        return logits, (logits / self.temperature).softmax(1)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export a LeNet-5 checkpoint to ONNX and "
                                                 "check it with ONNX Runtime.")
    parser.add_argument("--checkpoint", default="save_model/best_model.pth",
                        help="checkpoint to export (default: %(default)s)")
    parser.add_argument("--out", help="ONNX file to write (default: lenet5.onnx beside the "
                                      "checkpoint)")
    parser.add_argument("--data-dir", default=datasets.DATA_DIR,
                        help="folder of the test images the export is checked on "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = str(Path(args.checkpoint).with_name("lenet5.onnx"))
    return args


def to_onnx(model: RawPixels, metadata: dict[str, str]) -> bytes:
    """The serialized ONNX model, with a dynamic batch size and ``metadata`` attached."""
    example = torch.zeros(2, 1, datasets.SIDE, datasets.SIDE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # the exporter's notes on its own internals
        program = torch.onnx.export(model, (example,), input_names=["pixels"],
                                    output_names=["logits", "probabilities"], verbose=False,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},))
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def compare(onnx_bytes: bytes, pixels: torch.Tensor, expected: torch.Tensor
            ) -> tuple[int, float]:
    """On how many images ONNX Runtime (CPU) picks the class that PyTorch's ``expected``
    logits pick, and the largest difference between the two sets of logits."""
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = torch.cat([torch.from_numpy(session.run(["logits"], {"pixels": batch.numpy()})[0])
                     for batch in pixels.split(engine.EVAL_BATCH_SIZE)])
    return int((got.argmax(1) == expected.argmax(1)).sum()), float((got - expected).abs().max())


def main(argv=None) -> None:
    args = parse_args(argv)
    reader = confidence.open_reader(args.checkpoint, torch.device("cpu"))
    checkpoint = reader.checkpoint
    model = RawPixels(reader.model, checkpoint["mean"], checkpoint["std"],
                      reader.temperature).eval()
    dataset = checkpoint["dataset"]
    images, labels = datasets.load(args.data_dir, "test", dataset)
    pixels = images.unsqueeze(1).float() / 255

    metadata = {"classes": json.dumps(checkpoint["classes"]), "dataset": dataset,
                "input": "pixels: N x 1 x 28 x 28 float32 in [0, 1], as the training images "
                         "(normalization inside the graph)",
                "outputs": "logits: N x classes, as the network computes them; probabilities: " +
                           ("softmax(logits / temperature), calibrated on the validation images"
                            if reader.calibrated else "softmax(logits), the network's own (its "
                            "checkpoint holds no calibration)"),
                "temperature": json.dumps(reader.temperature),
                "epoch": json.dumps(checkpoint.get("epoch")),
                "val_accuracy": json.dumps(checkpoint.get("val_accuracy"))}
    with torch.inference_mode():
        expected = torch.cat([model(x)[0] for x in pixels.split(engine.EVAL_BATCH_SIZE)])
    correct = int((expected.argmax(1) == labels).sum())
    metadata["test_accuracy"] = json.dumps(correct / len(labels))
    onnx_bytes = to_onnx(model, metadata)
    agree, largest = compare(onnx_bytes, pixels, expected)
    print(f"ONNX Runtime and PyTorch agree on {agree:,} of {len(labels):,} test images; "
          f"largest logit difference {largest:.1e}")
    if agree != len(labels) or largest >= MAX_LOGIT_DIFFERENCE:
        raise ExportError(f"the exported graph does not match the checkpoint (need all "
                          f"{len(labels):,} and a difference below {MAX_LOGIT_DIFFERENCE:.0e}); "
                          f"{args.out} was not written")
    with cli.writing(args.out, "--out"):
        write_atomic(args.out, lambda f: f.write(onnx_bytes))
    print(f"wrote {args.out} ({len(onnx_bytes) / 1024:.0f} kB; test accuracy "
          f"{correct / len(labels):.2%}, classes {', '.join(checkpoint['classes'])})")


if __name__ == "__main__":
    cli.run_script(main)
