"""Show a checkpoint's predictions as text and as one picture (on the test images of the set
it was trained on, or on your own pictures of digits).

    python show.py                        # the first 10 test images
    python show.py --random --count 20    # 20 random ones
    python show.py --errors               # the test images it gets wrong, most confident first
    python show.py --image my_digit.jpg   # your own handwriting (files or folders)
    python show.py --layers --index 7     # inside the network: every layer, for one image
"""
import cli

if __name__ == "__main__":    # importing torch takes seconds: a stop during it ends quietly too
    cli.stop_quietly_while_starting()

import argparse
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

import confidence
import datasets
import engine
import handwriting
import net
import plots
from atomic import write_atomic

ZOOM = 4                   # each 28x28 digit is drawn 112x112
DIGIT_PX = datasets.SIDE * ZOOM    # side of one drawn digit
COLUMNS = 10
MAX_TILES = 500            # 50 rows of 10: about 10 megapixels, as much as a viewer shows well
CAPTION_SIZE = 15
VIEWER_FAILS_WITHIN = 3    # seconds: an opener that finds no viewer says so by then
RIGHT, WRONG = (40, 40, 40), (210, 30, 30)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Show LeNet-5's predictions on test "
                                                 "images as text and as one PNG.")
    parser.add_argument("--checkpoint", default="save_model/best_model.pth",
                        help="checkpoint to use (default: %(default)s)")
    parser.add_argument("--start", type=int, default=0,
                        help="index of the first test image (default: %(default)s)")
    parser.add_argument("--count", type=cli.ranged(int, 1), default=10,
                        help="how many images (default: %(default)s)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--random", action="store_true",
                       help="pick random test images instead of consecutive ones")
    which.add_argument("--errors", action="store_true",
                       help="show misclassified test images, most confident mistakes first")
    which.add_argument("--image", nargs="+", metavar="PATH",
                       help="predict your own pictures of digits (files or folders)")
    parser.add_argument("--layers", action="store_true",
                        help="draw what every layer computes for one image (--index N of "
                             "the test set, or one --image FILE) and the learned kernels")
    parser.add_argument("--index", type=cli.ranged(int, 0), default=None,
                        help="the test image for --layers (default: 0)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed for --random, to get the same images again")
    parser.add_argument("--out", help="picture to write (default: predictions.png beside the "
                                      "checkpoint; errors.png with --errors, own.png with "
                                      "--image, layers.png with --layers)")
    parser.add_argument("--show", action="store_true",
                        help="also open the picture in the system's image viewer")
    parser.add_argument("--device", default="auto", choices=engine.DEVICES,
                        help="where to run (default: %(default)s)")
    parser.add_argument("--data-dir", default=datasets.DATA_DIR,
                        help="MNIST folder (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.layers and (args.random or args.errors):
        parser.error("--layers draws one image: pick it with --index N or --image FILE")
    if args.layers and args.image and len(args.image) > 1:
        parser.error("--layers draws one image: pass one --image FILE")
    if args.index is not None and not args.layers:
        parser.error("--index picks the image for --layers; for predictions use --start")
    # Each mode its own file beside the checkpoint, so that no picture overwrites another
    # mode's or another run's.
    if args.out is None:
        name = ("layers.png" if args.layers else "errors.png" if args.errors else
                "own.png" if args.image else "predictions.png")
        args.out = str(Path(args.checkpoint).with_name(name))
    if Path(args.out).suffix.lower() not in Image.registered_extensions():
        parser.error(f"--out {args.out}: give the picture a file type, for example .png")
    return args


def pick_indices(args, total: int) -> torch.Tensor:
    """The test images that --random or --start/--count ask for."""
    if args.random:
        generator = torch.Generator()
        generator.manual_seed(args.seed) if args.seed is not None else generator.seed()
        return torch.randperm(total, generator=generator)[:args.count].sort().values
    if not 0 <= args.start < total:
        raise cli.Problem(f"--start must be between 0 and {total - 1}, got {args.start}")
    return torch.arange(args.start, min(args.start + args.count, total))


def tile(image: Image.Image, lines: list[str], wrong: bool, font) -> Image.Image:
    """One picture with its caption lines below; a red frame and red text when ``wrong``."""
    line_height = font.getbbox("Ag")[3] + 4
    width = max(image.width, *(int(font.getlength(line)) for line in lines)) + 12
    out = Image.new("RGB", (width, image.height + 12 + line_height * len(lines)), "white")
    out.paste(image.convert("RGB"), ((width - image.width) // 2, 6))
    draw = ImageDraw.Draw(out)
    if wrong:
        draw.rectangle([0, 0, out.width - 1, out.height - 1], outline=WRONG, width=3)
    for i, line in enumerate(lines):
        draw.text((width // 2, image.height + 8 + i * line_height), line, anchor="ma",
                  fill=WRONG if wrong else RIGHT, font=font)
    return out


def grid(tiles: list[Image.Image], columns: int = COLUMNS) -> Image.Image:
    """Tiles laid out row by row in equal cells."""
    w, h = max(t.width for t in tiles), max(t.height for t in tiles)
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * w, rows * h), "white")
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % columns) * w + (w - t.width) // 2, (i // columns) * h))
    return sheet


def enlarged(pixels: torch.Tensor) -> Image.Image:
    """A 28x28 uint8 tensor as a grayscale picture, blown up with visible pixels."""
    image = Image.fromarray(pixels.numpy(), mode="L")
    return image.resize((image.width * ZOOM, image.height * ZOOM), Image.NEAREST)


def save_picture(image: Image.Image, path: str) -> None:
    path = Path(path)
    file_type = Image.registered_extensions()[path.suffix.lower()]
    write_atomic(path, lambda f: image.save(f, format=file_type))


def open_in_viewer(path: str) -> None:
    """Hand the picture to the desktop's viewer; say where it is when there is none."""
    if sys.platform == "win32":
        os.startfile(path)  # the Windows way to open a file with its program
        return
    if sys.platform != "darwin" and not (os.environ.get("DISPLAY") or
                                         os.environ.get("WAYLAND_DISPLAY")):
        print(f"no screen to show it on (a session over SSH?): copy {path} to a machine "
              f"with one")
        return
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    try:
        viewer = subprocess.Popen([opener, path], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        print(f"no image viewer found ({opener} is missing); open {path} yourself")
        return
    # The opener hands the file over and ends at once, or runs the viewer until it is closed.
    with contextlib.suppress(subprocess.TimeoutExpired):
        if viewer.wait(VIEWER_FAILS_WITHIN) != 0:
            print(f"{opener} found no program to show {path}; open it yourself")


def show_test_images(args, reader: confidence.Reader, font
                     ) -> tuple[list[Image.Image], list[str]]:
    """The tiles of the chosen test images and the report's lines."""
    images, labels = datasets.load(args.data_dir, "test", reader.checkpoint["dataset"])
    # Only --errors has to predict every test image; the other modes predict just theirs.
    indices = torch.arange(len(labels)) if args.errors else pick_indices(args, len(labels))
    images, labels = images[indices], labels[indices]
    batches = reader.batches(images, labels)
    probabilities = torch.cat([reader.probabilities(x) for x, _ in batches])
    sure, predicted = probabilities.max(1)
    rows = torch.arange(len(indices))
    lines = []
    if args.errors:
        wrong = (predicted != labels).nonzero().flatten()
        rows = wrong[sure[wrong].argsort(descending=True)][:args.count]
        lines.append(f"{len(wrong)} of {len(labels)} test images are misclassified; "
                     f"the {len(rows)} most confident mistakes:")
    classes = reader.checkpoint["classes"]
    longest = max(map(len, classes))
    guessed, actual = max(9, longest), max(6, longest)    # the columns' widths
    lines.append(f"{'index':>5} {'predicted':>{guessed}} {'actual':>{actual}} "
                 f"{'confidence':>10}  result")
    tiles, right = [], 0
    for row in rows.tolist():
        p, guess, truth = float(sure[row]), int(predicted[row]), int(labels[row])
        index = int(indices[row])
        right += guess == truth
        lines.append(f"{index:>5} {classes[guess]:>{guessed}} {classes[truth]:>{actual}} "
                     f"{p:>10.2%}  "
                     f"{'right' if guess == truth else 'WRONG'}")
        tiles.append(tile(enlarged(images[row]), [f"pred {classes[guess]} ({p:.1%})",
                                                  f"true {classes[truth]}  #{index}"],
                          guess != truth, font))
    if not args.errors:
        lines.append(f"{right} of {len(tiles)} right")
    return tiles, lines


def show_own_images(args, reader: confidence.Reader, font
                    ) -> tuple[list[Image.Image], list[str]]:
    """The tiles of the readable pictures and the report's lines; the others are named on
    stderr."""
    files, problems = handwriting.image_files(args.image)
    classes = reader.checkpoint["classes"]
    tiles, lines = [], []
    for path in files:
        try:
            original = handwriting.open_image(path, "it")
            prepared = handwriting.prepare(original)
        except handwriting.ImageProblem as e:
            problems.append(f"{path}: {e}")
            continue
        reading = reader.read(reader.normalized(prepared))[0]
        lines.append(f"{path}: {describe(reading, classes)}")
        thumbnail = original.convert("RGBA")
        thumbnail.thumbnail((DIGIT_PX, DIGIT_PX))
        pair = Image.new("RGB", (DIGIT_PX * 2 + 8, DIGIT_PX), "white")
        pair.paste(thumbnail, ((DIGIT_PX - thumbnail.width) // 2,
                               (DIGIT_PX - thumbnail.height) // 2), thumbnail)
        pair.paste(enlarged((prepared * 255).round().byte()), (DIGIT_PX + 8, 0))
        name = path.name if len(path.name) <= 28 else path.name[:25] + "..."
        caption = (f"seen as {classes[reading.best]} ({reading.sure:.1%})" if reading.digit
                   else f"not a digit (as a digit: {classes[reading.best]})")
        tiles.append(tile(pair, [name, caption], not reading.digit, font))
    for problem in problems:
        print(f"skipped {problem}", file=sys.stderr)
    if not tiles:
        raise cli.Problem("none of the pictures could be read (see above)")
    return tiles, lines


def show_layers(args, reader: confidence.Reader) -> str:
    """Draw every layer's output for the chosen image into ``args.out``; returns the line
    that says which image and how it was read."""
    classes = reader.checkpoint["classes"]
    if args.image:
        path = Path(args.image[0])
        if path.is_dir():
            raise cli.Problem(f"--layers draws one picture and {path} is a folder: pass one "
                              f"of its files")
        files, problems = handwriting.image_files(args.image)
        if problems:
            raise cli.Problem(problems[0])
        if len(files) > 1:
            raise cli.Problem(f"--layers draws one picture and {path} matches {len(files)}: "
                              f"pass one of them")
        path = files[0]
        try:
            pixels = handwriting.prepare(handwriting.open_image(path, "it"))
        except handwriting.ImageProblem as e:
            raise cli.Problem(f"{path}: {e}") from None
        name = path.name
    else:
        images, labels = datasets.load(args.data_dir, "test", reader.checkpoint["dataset"])
        index = args.index or 0
        if index >= len(labels):
            raise cli.Problem(f"--index must be below {len(labels)}, got {index}")
        pixels = images[index].float() / 255
        name = f"test image #{index} (labelled {classes[int(labels[index])]})"
    readings, outputs = reader.read_inside(reader.normalized(pixels))
    reading, outputs = readings[0], {layer: output[0] for layer, output in outputs.items()}
    line = f"{name}: {describe(reading, classes)}"
    with cli.writing(args.out, "--out"):
        plots.layer_view(pixels, outputs, net.kernels(reader.model), classes,
                         reading.probabilities,
                         f"{args.checkpoint}, {line}", args.out)
    return line


def describe(reading: confidence.Reading, classes: list[str]) -> str:
    """One picture's reading in words: the digit and how sure, or that there is none."""
    top = reading.probabilities.topk(3)
    others = ", ".join(f"{classes[i]} {p:.1%}" for p, i in zip(top.values[1:].tolist(),
                                                               top.indices[1:].tolist()))
    if not reading.digit:
        return (f"not a digit (as a digit: {classes[reading.best]} {reading.sure:.1%}, "
                f"then {others})")
    return f"{classes[reading.best]}  ({reading.sure:.1%} sure; then {others})"


def main(argv=None) -> None:
    args = parse_args(argv)
    reader = confidence.open_reader(args.checkpoint, engine.pick_device(args.device),
                                    digits_for="--image" if args.image else None)
    if args.layers:
        lines, left_out = [show_layers(args, reader)], ""
    else:
        font = ImageFont.load_default(size=CAPTION_SIZE)
        show = show_own_images if args.image else show_test_images
        tiles, lines = show(args, reader, font)
        if not tiles:
            print("nothing to draw: every test image is classified correctly")
            return
        # The picture first: a reader that stops early (| head) must not cost it.
        with cli.writing(args.out, "--out"):
            save_picture(grid(tiles[:MAX_TILES], columns=5 if args.image else COLUMNS),
                         args.out)
        left_out = f" (the first {MAX_TILES} of {len(tiles)})" if len(tiles) > MAX_TILES else ""
    print("\n".join(lines))
    print(f"picture written to {args.out}{left_out}")
    if args.show:
        open_in_viewer(args.out)


if __name__ == "__main__":
    cli.run_script(main)
