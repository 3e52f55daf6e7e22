"""The CUDA path: CUDA-graph training steps and the scripts on a GPU. Skipped without one."""
import csv

import pytest
import torch

import datasets
import engine
from conftest import ROOT, SMOKE, run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda") if torch.cuda.is_available() else None


def weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def train_epoch(cuda_graph: bool, amp: bool = False, count: int = 2000, batch_size: int = 128):
    """One seeded epoch over ``count`` images: (result, weights, graph replays)."""
    images, labels = datasets.load(ROOT / "data", "train")
    torch.manual_seed(0)
    model = engine.new_model(CUDA)
    optimizer = engine.new_optimizer(model, "adamw", 3e-3, weight_decay=1e-2)
    batches = datasets.Batches(images[:count], labels[:count], batch_size, CUDA, shuffle=True,
                               augment=1.0, generator=torch.Generator(CUDA).manual_seed(0))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=len(batches))
    replays = 0
    original = engine._GraphedStep.__call__

    def counted(self, x, y):
        nonlocal replays
        replays += 1
        original(self, x, y)

    engine._GraphedStep.__call__ = counted
    try:
        result = engine.train_one_epoch(model, batches, optimizer, scheduler, amp=amp,
                                        cuda_graph=cuda_graph)
    finally:
        engine._GraphedStep.__call__ = original
    return result, weights(model), replays


@pytest.mark.parametrize("amp", [False, True])
def test_graph_replay_trains_like_the_eager_loop(amp):
    eager, eager_weights, none = train_epoch(cuda_graph=False, amp=amp)
    graphed, graphed_weights, replays = train_epoch(cuda_graph=True, amp=amp)
    assert none == 0
    assert replays == 2000 // 128               # every full batch; the last 80 ran eagerly
    assert graphed.total == eager.total == 2000
    # Same batches, same updates: only the order of floating-point sums may differ.
    assert abs(graphed.correct - eager.correct) <= 5
    assert graphed.loss == pytest.approx(eager.loss, rel=1e-2)
    torch.manual_seed(0)
    moved = (eager_weights - weights(engine.new_model(CUDA))).norm()
    apart = (graphed_weights - eager_weights).norm()
    assert apart < (3e-2 if amp else 1e-3) * moved, (apart, moved)


def test_train_resume_test_show_on_cuda(tmp_path):
    first = run("train.py", *SMOKE, "--device", "cuda", "--save-dir", tmp_path)
    assert first.returncode == 0, first.stderr
    more = run("train.py", "--resume", "--epochs", "3", "--device", "cuda",
               "--save-dir", tmp_path)
    assert more.returncode == 0, more.stderr
    with open(tmp_path / "history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2", "3"]
    tested = run("test.py", "--device", "cuda", "--checkpoint", tmp_path / "best_model.pth",
                 "--confusion", tmp_path / "confusion.png")
    assert tested.returncode == 0 and "accuracy" in tested.stdout, tested.stderr
    shown = run("show.py", "--device", "cuda", "--checkpoint", tmp_path / "best_model.pth",
                "--out", tmp_path / "predictions.png")
    assert shown.returncode == 0 and (tmp_path / "predictions.png").stat().st_size > 0, \
        shown.stderr
