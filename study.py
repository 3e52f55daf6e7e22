"""Train one recipe over many seeds and report the mean, so that two recipes can be told apart.

    python study.py --seeds 8                                   # the default recipe, seeds 0-7
    python study.py --seeds 0-7 --lr 1e-3 --save-dir studies/lr # any train.py flag passes on
    python study.py --seeds 8 --save-dir studies/b --against studies/default
    python study.py --resume --save-dir studies/b               # continue a stopped study

Each seed is a `python train.py --seed N` process with its own folder (DIR/seed-N: its
best_model.pth, last.pth, history.csv and log); with several cores several run at once, the
cores split evenly between them. A seed's figures are read from its files: the kept model's
validation and test accuracy and the test accuracy of the model after the last epoch.
"""
import cli

if __name__ == "__main__":    # importing torch takes seconds: a stop during it ends quietly too
    cli.stop_quietly_while_starting()

import argparse
import csv
import io
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import confidence
import engine
import plots
import train
from atomic import write_atomic
from checkpoint import load_checkpoint

RECIPE = "study.json"      # the train.py flags and the seeds: what --resume and --against read
TABLE = "study.csv"        # one row per finished seed
FIELDS = ["seed", "kept_epoch", "val_accuracy", "test_accuracy", "last_epoch",
          "last_test_accuracy"]
OWNED = {"--seed", "--save-dir", "--resume"}      # train.py flags the study sets itself


def seeds_of(text: str) -> list[int]:
    """``8``: seeds 0-7; ``3-9``: 3 to 9; ``0,4,7``: those."""
    try:
        if "," in text:
            seeds = [int(part) for part in text.split(",")]
        elif "-" in text.strip("-"):
            first, last = (int(part) for part in text.split("-"))
            seeds = list(range(first, last + 1))
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count (8), a range (0-7) or a list "
                                         f"(0,4,7), got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r} names no seeds, a negative one or one twice")
    return seeds


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,        # --seed must reach the check below, not pass for --seeds
        description="Train a recipe (train.py's flags) over several seeds and report mean, "
                    "standard error, min and max; every flag not listed here goes to train.py.")
    parser.add_argument("--seeds", type=seeds_of, default=None,
                        help="how many seeds (8: seeds 0-7), a range (0-7) or a list (0,4,7) "
                             "(default: 8, or the stopped study's with --resume)")
    parser.add_argument("--save-dir", default="save_model/study",
                        help="one folder per seed and the table (default: %(default)s)")
    parser.add_argument("--jobs", type=cli.ranged(int, 1), default=None,
                        help="runs at once (default: one per core, at most one per seed)")
    parser.add_argument("--against", metavar="DIR_OR_FLAGS",
                        help="a saved study's folder, or train.py flags in quotes (run as a "
                             "study of the same seeds in SAVE_DIR/against): prints the "
                             "difference of the means with its standard error")
    parser.add_argument("--resume", action="store_true",
                        help="continue the study in --save-dir: finished seeds are kept, a "
                             "stopped one resumes from its last.pth")
    return parser


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    """The study's flags, and the rest: train.py's, checked by train.py's parser."""
    parser = make_parser()
    args, flags = parser.parse_known_args(argv)
    owned = [flag for flag in flags if flag.split("=")[0] in OWNED]
    if owned:
        parser.error(f"{owned[0]} is the study's to set: use --seeds and --save-dir")
    train.parse_args(flags)       # a mistake in the recipe shows now, as train.py says it
    return args, flags


class Study:
    """A recipe over seeds in one folder: its runs, its table and its recipe file."""

    def __init__(self, folder: Path, flags: list[str], seeds: list[int]):
        self.folder, self.flags, self.seeds = folder, flags, seeds
        self.recipe = train.parse_args(flags)

    @classmethod
    def saved(cls, folder: Path) -> "Study":
        try:
            recipe = json.loads((folder / RECIPE).read_text())
        except (OSError, ValueError):
            raise cli.Problem(f"no study in {folder} (its {RECIPE} is missing or damaged): "
                              f"start one with python study.py --save-dir {folder}") from None
        return cls(folder, recipe["flags"], recipe["seeds"])

    def run_dir(self, seed: int) -> Path:
        return self.folder / f"seed-{seed}"

    def rows(self) -> dict[int, dict]:
        """The finished seeds' rows of the table."""
        try:
            with open(self.folder / TABLE, newline="") as f:
                return {int(row["seed"]): row for row in csv.DictReader(f)}
        except FileNotFoundError:
            return {}

    def record(self, row: dict) -> None:
        rows = self.rows() | {row["seed"]: row}
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows[seed] for seed in sorted(rows))
        write_atomic(self.folder / TABLE, lambda f: f.write(text.getvalue().encode()))


def figures(run_dir: Path, seed: int, data_dir: str) -> dict:
    """A finished run's row: the kept model's epoch and accuracies, and the test accuracy of
    the model after the last epoch, evaluated here from the run's files."""
    kept = confidence.open_reader(run_dir / "best_model.pth", torch.device("cpu"))
    last = load_checkpoint(run_dir / "last.pth")
    batches = kept.test_batches(data_dir)
    test = engine.evaluate(kept.model, batches)
    kept.model.load_state_dict(last["model"])
    last_test = engine.evaluate(kept.model, batches)
    return {"seed": seed, "kept_epoch": kept.checkpoint["epoch"],
            "val_accuracy": kept.checkpoint["val_accuracy"], "test_accuracy": test.accuracy,
            "last_epoch": last["epoch"], "last_test_accuracy": last_test.accuracy}


def finished(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` trained all its epochs (its last.pth says so)."""
    try:
        last = load_checkpoint(run_dir / "last.pth")
    except cli.Problem:
        return False
    return last["epoch"] == last["hparams"]["epochs"] and (run_dir / "best_model.pth").exists()


def train_command(study: Study, seed: int) -> list[str]:
    run_dir = study.run_dir(seed)
    if (run_dir / "last.pth").exists():     # stopped in the middle: train.py takes it up
        return [sys.executable, str(Path(train.__file__)), "--resume", "--save-dir",
                str(run_dir)]
    return [sys.executable, str(Path(train.__file__)), *study.flags, "--seed", str(seed),
            "--save-dir", str(run_dir)]


def run_seeds(study: Study, jobs: int) -> None:
    """Train every seed without a row in the table, ``jobs`` at once, each with its share of
    the cores; a stop is passed on to the runs, which keep their last finished epoch."""
    done = study.rows()
    todo = [seed for seed in study.seeds if seed not in done]
    threads = max(1, engine.available_cores() // jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    running: dict[int, tuple[subprocess.Popen, float]] = {}
    try:
        while todo or running:
            while todo and len(running) < jobs:
                seed = todo.pop(0)
                run_dir = study.run_dir(seed)
                run_dir.mkdir(parents=True, exist_ok=True)
                if finished(run_dir):       # trained before a stop, not yet in the table
                    study.record(figures(run_dir, seed, study.recipe.data_dir))
                    continue
                with open(run_dir / "train.log", "a") as log:
                    # A session of its own: a Ctrl-C in the terminal reaches the study alone,
                    # which passes one stop to each run.
                    process = subprocess.Popen(train_command(study, seed), stdout=log,
                                               stderr=subprocess.STDOUT, env=env,
                                               start_new_session=True)
                running[seed] = process, time.monotonic()
                print(f"seed {seed}: training ({threads} thread{'s' * (threads > 1)}), "
                      f"log in {run_dir / 'train.log'}", flush=True)
            time.sleep(0.2)
            for seed, (process, since) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[seed]
                if process.returncode:
                    raise cli.Problem(f"seed {seed} failed (train.py exit {process.returncode})"
                                      f": {last_line(study.run_dir(seed) / 'train.log')}")
                row = figures(study.run_dir(seed), seed, study.recipe.data_dir)
                study.record(row)
                print(f"seed {seed}: done in {time.monotonic() - since:.0f} s, kept epoch "
                      f"{row['kept_epoch']}, test accuracy {row['test_accuracy']:.2%}",
                      flush=True)
    finally:
        for process, _ in running.values():      # a stop or a failure: the others stop too
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process, _ in running.values():
            process.wait()


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def summary(rows: list[dict], column: str) -> tuple[float, float, float, float] | None:
    """Mean, standard error of the mean, min and max of a column, as fractions; None when the
    runs have none (no validation split)."""
    values = [float(row[column]) for row in rows if row[column] not in ("", None)]
    if not values:
        return None
    mean = sum(values) / len(values)
    spread = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0
    return mean, math.sqrt(spread / len(values)), min(values), max(values)


COLUMNS = [("val_accuracy", "val acc"), ("test_accuracy", "test acc"),
           ("last_test_accuracy", "last epoch's test acc")]


def table(rows: list[dict]) -> str:
    """The finished seeds' ``rows`` and their mean, standard error, min and max, as text."""
    headings = " ".join(f"{h:>{max(9, len(h))}}" for _, h in COLUMNS)
    lines = [f"{'seed':>6} {'kept epoch':>10} " + headings]

    def cell(value, heading, places=2):
        width = max(9, len(heading))
        return (f"{'-':>{width}}" if value in ("", None) else
                f"{float(value):>{width}.{places}%}")
    for row in rows:
        lines.append(f"{row['seed']:>6} {row['kept_epoch']:>10} " +
                     " ".join(cell(row[c], h) for c, h in COLUMNS))
    stats = [summary(rows, c) for c, _ in COLUMNS]
    for i, name in enumerate(["mean", "std. error", "min", "max"]):
        lines.append(f"{name:>17} " + " ".join(cell(s and s[i], h, 3 if i < 2 else 2)
                                               for s, (_, h) in zip(stats, COLUMNS)))
    return "\n".join(lines)


def difference(study: Study, other: Study) -> str:
    """The difference of the two studies' means, with its standard error and what it says."""
    lines = [f"{study.folder} against {other.folder} ({len(study.seeds)} and "
             f"{len(other.seeds)} seeds):"]
    for column, heading in COLUMNS[1:]:
        mean, error, _, _ = summary(list(study.rows().values()), column)
        other_mean, other_error, _, _ = summary(list(other.rows().values()), column)
        delta, combined = mean - other_mean, math.hypot(error, other_error)
        verdict = ("a difference beyond two standard errors" if abs(delta) > 2 * combined
                   else "within two standard errors: not told apart")
        lines.append(f"  {heading}: {100 * delta:+.3f} points, standard error "
                     f"{100 * combined:.3f} ({verdict})")
    return "\n".join(lines)


def start(folder: Path, flags: list[str], seeds: list[int] | None, resume: bool) -> Study:
    """The study the flags ask for in ``folder``, or the stopped one there with ``resume``."""
    if resume:
        study = Study.saved(folder)
        if flags or (seeds and seeds != study.seeds):
            raise cli.UsageError(f"--resume continues {folder} with its own recipe and seeds: "
                                 f"drop the other flags")
        return study
    if (folder / RECIPE).exists():
        raise cli.UsageError(f"{folder} already holds a study: continue it with --resume, or "
                             f"pass another --save-dir")
    study = Study(folder, flags, seeds or list(range(8)))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / RECIPE, lambda f: f.write(json.dumps(
            {"flags": flags, "seeds": study.seeds}, indent=1).encode()))
    except OSError as e:
        raise cli.Problem(f"cannot write to {folder} ({e.strerror or e}): pass a writable "
                          f"--save-dir") from None
    return study


def against(args: argparse.Namespace, study: Study) -> Study:
    """The study to compare with: a saved, finished one, or the recipe given as flags, to be
    run as a study of the same seeds in SAVE_DIR/against. Found before any training, so that
    a mistake in --against is said at once, not after the study's own runs."""
    if Path(args.against).is_dir():
        other = Study.saved(Path(args.against))
        done = other.rows()
        missing = [seed for seed in other.seeds if seed not in done]
        if missing:
            raise cli.Problem(f"the study in {args.against} has not finished (seeds "
                              f"{', '.join(map(str, missing))}): continue it with --resume")
        return other
    folder, flags = study.folder / "against", shlex.split(args.against)
    other = start(folder, flags, study.seeds, resume=False) if not (folder / RECIPE).exists() \
        else Study.saved(folder)
    if other.flags != flags:
        raise cli.UsageError(f"{folder} holds the study of --against "
                             f"{shlex.join(other.flags)!r}: compare with that, or start "
                             f"another --save-dir")
    return other


def main(argv=None) -> None:
    args, flags = parse_args(argv)
    try:
        study = start(Path(args.save_dir), flags, args.seeds, args.resume)
    except cli.UsageError as e:
        make_parser().error(str(e))
    jobs = args.jobs or min(engine.available_cores(), len(study.seeds))
    command = " ".join(["python train.py", *map(shlex.quote, study.flags)])
    print(f"{len(study.seeds)} seeds of `{command}` in {study.folder}, {jobs} at a time",
          flush=True)
    with cli.stops_raise_interrupted():
        try:
            other = against(args, study) if args.against else None
            run_seeds(study, jobs)
            if other:
                run_seeds(other, jobs)      # a stopped one continues; a saved one is done
        except cli.UsageError as e:
            make_parser().error(str(e))
        except cli.Interrupted as stop:
            done = len(study.rows())
            again = f" --against {shlex.quote(args.against)}" if args.against else ""
            print(f"\nstopped by {stop}: {done} of {len(study.seeds)} seeds finished, the "
                  f"others keep their last epoch; continue with: python study.py --resume "
                  f"--save-dir {study.folder}{again}", file=sys.stderr)
            sys.exit(128 + stop.signum)
    done = study.rows()
    print(table([done[seed] for seed in study.seeds]))
    histories = {seed: load_checkpoint(study.run_dir(seed) / "last.pth")["history"]
                 for seed in study.seeds}
    kept = {seed: int(done[seed]["kept_epoch"]) for seed in study.seeds}
    plots.study_curves(histories, kept, f"{command}: {len(study.seeds)} seeds",
                       study.folder / "curves.png")
    print(f"table in {study.folder / TABLE}, every run's curves in {study.folder / 'curves.png'}")
    if other:
        print(difference(study, other))


if __name__ == "__main__":
    cli.run_script(main)
