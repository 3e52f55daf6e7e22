import json
from types import SimpleNamespace

import pytest
import torch

import bench
import ddp
import engine
import train
from conftest import assert_one_line_error, run, run_main
from net import LeNet5


@pytest.fixture(scope="module")
def quick() -> dict:
    """One quick run of every part of the benchmark, as JSON."""
    result = run_main(bench, "--quick", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_quick_bench_runs_every_part_and_reports_consistent_figures(quick):
    r = quick
    speed = r["article_settings"]
    assert speed["article_images_per_s"] > 0 and speed["ours_images_per_s"] > 0
    assert speed["speedup"] == pytest.approx(speed["ours_images_per_s"]
                                             / speed["article_images_per_s"])
    for side in ("ours", "article"):
        race = r["to_99"][side]
        assert race["seconds"] > 0 and 0 <= race["accuracy"] <= 1
        assert race["reached"] == (race["accuracy"] >= 0.99)
    assert r["to_99"]["ours"]["accuracy"] > 0.5           # one short epoch learns something
    assert r["default_throughput"]["train_images_per_s"] > 0
    assert r["machine"]["quick"] is True


def test_quick_bench_table(quick, capsys):
    bench.report(quick)
    out = capsys.readouterr().out
    for heading in ("1. article's settings", "2. training time until test accuracy >= 99%",
                    "3. train.py defaults", "speed-up"):
        assert heading in out
    speed = quick["article_settings"]
    assert f"speed-up {speed['speedup']:.2f}x" in out
    assert f"{speed['ours_images_per_s']:>9,.0f}" in out


def test_the_defaults_train_on_what_train_py_trains_on(monkeypatch):
    """Drawn non-digits included: without them the loss takes a shorter path (engine._loss)
    and the throughput would not be train.py's."""
    seen = []
    monkeypatch.setattr(engine, "train_one_epoch",
                        lambda model, batches, *args, **kwargs: seen.append(batches))
    monkeypatch.setattr(engine, "evaluate", lambda *args, **kwargs: None)
    args = bench.parse_args(["--quick"])
    labels = torch.zeros(3000, dtype=torch.long)
    bench.default_throughput(args, torch.device("cpu"), labels, SimpleNamespace(labels=labels))
    defaults = train.parse_args(["--subset", "3000"])
    expected, _, _ = train.make_batches(defaults, torch.device("cpu"), torch.Generator(),
                                        ddp.World())
    batches = seen[0]
    assert torch.equal(batches.labels, expected.labels)
    digits = int((batches.labels != engine.NO_CLASS).sum())
    assert (batches.labels == engine.NO_CLASS).sum() == round(defaults.outliers * digits) > 0
    assert (batches.augment, batches.batch_size) == (expected.augment, defaults.batch_size)


def test_race_stops_at_the_first_epoch_on_target_and_counts_only_training_time():
    accuracies = iter([0.95, 0.991, 0.995])
    result = bench.race(lambda: 2.5, lambda: next(accuracies), epochs=3)
    assert result == {"reached": True, "epochs": 2, "seconds": 5.0, "accuracy": 0.991}
    short = bench.race(lambda: 1.0, lambda: 0.9, epochs=4)
    assert short == {"reached": False, "epochs": 4, "seconds": 4.0, "accuracy": 0.9}


def test_race_results_read_as_english():
    assert bench.describe({"reached": True, "epochs": 1, "seconds": 2.04, "accuracy": 0.9912}) \
        == "2.0 s (1 epoch, 99.12%)"
    assert bench.describe({"reached": False, "epochs": 4, "seconds": 61.0, "accuracy": 0.9871}) \
        == "not reached in 4 epochs, 61.0 s (test accuracy 98.71%)"


@pytest.mark.parametrize("args, message", [
    (["--rounds", "0"], "argument --rounds: must be >= 1, got 0"),
    (["--article-epochs", "-2"], "argument --article-epochs: must be >= 1, got -2"),
    (["--rounds", "many"], "argument --rounds: expected int, got 'many'"),
])
def test_impossible_values_are_refused(args, message):
    assert_one_line_error(run_main(bench, *args), message, code=2)


@pytest.mark.processes
def test_a_mistake_ends_the_real_process_in_one_line():
    assert_one_line_error(run("bench.py", "--device", "tpu"), "invalid choice: 'tpu'", code=2)


def test_the_article_side_is_net_py_model_in_stock_modules():
    torch.manual_seed(0)
    tutorial = bench.tutorial_model(torch.device("cpu"))
    assert all(type(layer).__module__.startswith("torch.nn.modules") for layer in tutorial.net)
    torch.manual_seed(0)
    ours = LeNet5()                               # same seed: the same initial weights
    assert ours.state_dict().keys() == tutorial.state_dict().keys()
    for name, value in ours.state_dict().items():
        assert torch.equal(value, tutorial.state_dict()[name]), name
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(ours(x), tutorial(x), atol=1e-5)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_printed_train_py_flags_are_the_raced_recipe(device):
    recipe = bench.fast_recipe(torch.device(device))
    args = train.parse_args(bench.train_flags(recipe).split())
    assert {name: getattr(args, name) for name in recipe} == recipe
    assert args.val_size == 0 and args.optimizer == "adamw" and args.scheduler == "onecycle"
