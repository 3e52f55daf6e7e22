"""Report how a checkpoint does on the 10,000 test images of the set it was trained on.

    python test.py                                # save_model/best_model.pth
    python test.py --checkpoint other.pth --json  # any checkpoint, machine-readable
"""
import cli

if __name__ == "__main__":    # importing torch takes seconds: a stop during it ends quietly too
    cli.stop_quietly_while_starting()

import argparse
import json
from pathlib import Path

import torch

import confidence
import datasets
import engine
import plots


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate a LeNet-5 checkpoint on the test "
                                                 "set of the data it was trained on.")
    parser.add_argument("--checkpoint", default="save_model/best_model.pth",
                        help="checkpoint to evaluate; a plain state_dict of the tutorial code "
                             "works too (default: %(default)s)")
    parser.add_argument("--device", default="auto", choices=engine.DEVICES,
                        help="where to run (default: %(default)s)")
    parser.add_argument("--data-dir", default=datasets.DATA_DIR,
                        help="MNIST folder (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--confusion", metavar="PATH",
                        help="where to draw the confusion matrix (default: confusion.png "
                             "beside the checkpoint)")
    parser.add_argument("--reliability", metavar="PATH",
                        help="where to draw the reliability diagram (default: reliability.png "
                             "beside the confusion matrix)")
    args = parser.parse_args(argv)
    # Beside the checkpoint: testing another run's model does not overwrite this run's pictures.
    if args.confusion is None:
        args.confusion = str(Path(args.checkpoint).with_name("confusion.png"))
    if args.reliability is None:
        args.reliability = str(Path(args.confusion).with_name("reliability.png"))
    return args


def report(args: argparse.Namespace) -> dict:
    reader = confidence.open_reader(args.checkpoint, engine.pick_device(args.device))
    checkpoint, dataset = reader.checkpoint, reader.checkpoint["dataset"]
    # Normalized as the checkpoint's training images were (not at all for the tutorial's).
    batches = reader.test_batches(args.data_dir)
    labels = batches.labels.cpu()
    result = engine.evaluate(reader.model, batches)
    confusion = result.confusion.tolist()
    logits, maps = confidence.logits_and_maps(reader.model, torch.cat([x for x, _ in batches]))
    readings = reader.judge(logits, maps)
    raw, calibrated = logits.softmax(1), torch.stack([r.probabilities for r in readings])
    before, after = (confidence.reliability(p, labels) for p in (raw, calibrated))
    per_class = [row[i] / max(sum(row), 1) for i, row in enumerate(confusion)]
    return {
        "checkpoint": str(args.checkpoint),
        "dataset": dataset,
        "epoch": checkpoint.get("epoch"),
        "val_accuracy": checkpoint.get("val_accuracy"),
        "loss": result.loss,
        "accuracy": result.accuracy,
        "errors": result.errors,
        "total": result.total,
        "per_class_accuracy": dict(zip(checkpoint["classes"], per_class)),
        "confusion": confusion,
        "temperature": reader.temperature,
        "calibration_error_before": confidence.calibration_error(before),
        "calibration_error": confidence.calibration_error(after),
        "reliability_before": before,
        "reliability": after,
        "refused_as_not_digit": (sum(not r.digit for r in readings) / len(readings)
                                 if reader.calibrated and datasets.DATASETS[dataset].digits
                                 else None),
    }


def print_table(r: dict) -> None:
    trained = (f"epoch {r['epoch']}" + (f", validation accuracy {r['val_accuracy']:.2%}"
                                        if r["val_accuracy"] is not None else "")
               if r["epoch"] is not None else "a plain state_dict")
    print(f"checkpoint  {r['checkpoint']} ({trained})")
    print(f"test loss   {r['loss']:.4f}")
    print(f"accuracy    {r['accuracy']:.2%} ({r['errors']} errors / {r['total']})")
    print(f"calibration error {r['calibration_error']:.2%} with temperature "
          f"{r['temperature']:.3f} (the network's own probabilities: "
          f"{r['calibration_error_before']:.2%})")
    if r["refused_as_not_digit"] is not None:
        print(f"refused as not a digit: {r['refused_as_not_digit']:.2%} of the test images")
    print()
    classes = list(r["per_class_accuracy"])
    kind = class_word(r["dataset"])
    width = max(5, *map(len, classes))
    print(f"{kind:>{width}} {'images':>7} {'errors':>7} {'accuracy':>9}")
    for i, (name, row) in enumerate(zip(classes, r["confusion"])):
        total, right = sum(row), row[i]
        print(f"{name:>{width}} {total:>7} {total - right:>7} "
              f"{r['per_class_accuracy'][name]:>9.2%}")
    print()
    # Long class names head the rows; the columns take their numbers.
    short = all(len(name) <= 5 for name in classes)
    heads = classes if short else [str(i) for i in range(len(classes))]
    rows = classes if short else [f"{name} {i}" for i, name in enumerate(classes)]
    width = max(6, *(len(row) + 1 for row in rows))
    print(f"confusion matrix (rows: true {kind}, columns: predicted {kind})")
    print(" " * width + "".join(f"{head:>6}" for head in heads))
    for label, row in zip(rows, r["confusion"]):
        print(f"{label:>{width}}" + "".join(f"{count:>6}" for count in row))


def class_word(dataset: str) -> str:
    return "digit" if datasets.DATASETS[dataset].digits else "class"


def main(argv=None) -> None:
    args = parse_args(argv)
    r = report(args)
    with cli.writing(args.confusion, "--confusion"):
        plots.confusion_matrix(r["confusion"], list(r["per_class_accuracy"]),
                               f"{r['checkpoint']}: test accuracy {r['accuracy']:.2%} "
                               f"({r['errors']} errors / {r['total']})", args.confusion,
                               kind=class_word(r["dataset"]))
    with cli.writing(args.reliability, "--reliability"):
        plots.reliability_diagram(r["reliability_before"], r["reliability"], r["temperature"],
                                  f"{r['checkpoint']}: calibration on the test images",
                                  args.reliability)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print_table(r)
        print(f"\nconfusion matrix drawn in {args.confusion}, reliability diagram in "
              f"{args.reliability}")


if __name__ == "__main__":
    cli.run_script(main)
