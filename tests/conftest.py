"""Shared test helpers: the scripts' ``main`` called in process as a person's command line
would call it, the scripts as real processes where only a process shows the behaviour, and
the trained runs that several tests share."""
import contextlib
import dataclasses
import gzip
import hashlib
import io
import os
import struct
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

# pytest-xdist's workers (pytest.ini) share the cores as study.py's runs do: an even share of
# threads each, for torch in the worker and for the scripts it starts, unless one is given.
# Set before torch is imported, which reads it once.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, len(os.sched_getaffinity(0)) // _workers)))

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cli  # noqa: E402 (after the path above)
import datasets  # noqa: E402

# A smoke run: small enough for seconds on 2 cores, big enough to learn something real.
# On the CPU wherever it runs: the tests check CPU figures (tests/test_cuda.py has the GPU's).
SMOKE = ["--subset", "3000", "--epochs", "2", "--batch-size", "64", "--device", "cpu"]


def run(script: str, *args, cwd=ROOT, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """``python script args...`` as a real process, output captured as text."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def next_line(stream, timeout: float = 120) -> str:
    """The next line a process writes to ``stream``; a failure, not a hang, when none comes
    within ``timeout`` seconds."""
    # A thread, not select(): the line may already wait in the stream's own buffer.
    line = []
    reader = threading.Thread(target=lambda: line.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert line, f"no output within {timeout} s"
    return line[0]


def wait_until_stops_are_handled(process: subprocess.Popen, timeout: float = 60) -> None:
    """Until the script has installed its own stop handlers (cli.stop_quietly_while_starting,
    its first act): the process then catches SIGTERM, which Python alone does not."""
    deadline = time.monotonic() + timeout
    while True:
        status = Path(f"/proc/{process.pid}/status").read_text()
        caught = int(next(line for line in status.splitlines()
                          if line.startswith("SigCgt:")).split()[1], 16)
        if caught >> (signal.SIGTERM - 1) & 1:
            return
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the script never took over its stop signals"
        time.sleep(0.005)


def wait_until_torch_is_loaded(process: subprocess.Popen, timeout: float = 120) -> None:
    """Until the process has mapped torch's library: its import is under way or done."""
    deadline = time.monotonic() + timeout
    while "libtorch" not in Path(f"/proc/{process.pid}/maps").read_text():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "torch was never loaded"
        time.sleep(0.01)


def run_main(module, *args, cwd=ROOT) -> subprocess.CompletedProcess:
    """``module.main(args)`` in this process, ended the way the script ends: the same exit
    status, the same output on stdout and stderr, without starting Python and torch again."""
    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.run_script(lambda: module.main([str(a) for a in args]))
        code = 0
    except SystemExit as e:   # what the interpreter does with sys.exit's argument
        code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
        if isinstance(e.code, str):
            err.write(e.code + "\n")
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess([module.__name__, *args], code, out.getvalue(),
                                       err.getvalue())


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str,
                          code: int = 1) -> None:
    """A person's mistake: non-zero exit, no traceback, one line naming the problem."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith(("error:", "usage:")) or "error:" in lines[-1], lines
    message = lines[-1]
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slow by nature (a compilation, or reading "
                                       "hundreds of generated pictures); -m 'not slow' leaves "
                                       "them out")
    config.addinivalue_line("markers", "processes: starts processes (the scripts, torchrun, "
                                       "a browser); -m 'not processes' runs the rest in-process")


_running = None     # the test being set up, run or torn down


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _running
    _running = item
    try:
        return (yield)
    finally:
        _running = None


def _refuse_unmarked(start):
    """``Popen``'s start, failing a test that starts a process without the ``processes``
    marker (directly or through a fixture it is the first to use), so that
    ``-m 'not processes'`` stays the quick in-process tier it claims to be."""
    def checked(*args, **kwargs):
        if _running is not None and not _running.get_closest_marker("processes"):
            raise AssertionError(f"{_running.nodeid} starts a process: mark it "
                                 f"@pytest.mark.processes")
        return start(*args, **kwargs)
    return checked


subprocess.Popen._execute_child = _refuse_unmarked(subprocess.Popen._execute_child)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One smoke run of train.py: its save folder and what it printed. It runs in that folder,
    as from an editor started elsewhere: the shipped data is found all the same."""
    import train
    save_dir = tmp_path_factory.mktemp("trained")
    result = run_main(train, *SMOKE, "--save-dir", save_dir, cwd=save_dir)
    assert result.returncode == 0, result.stderr
    assert not (save_dir / "data").exists()
    return save_dir, result


@pytest.fixture(scope="session")
def trained(smoke_run) -> Path:
    """The save folder of the smoke run (shared by the train, test and show tests)."""
    return smoke_run[0]


@pytest.fixture
def data_copy(tmp_path) -> Path:
    """A private copy of the shipped archives (extracted files left out), safe to damage."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for archive in (ROOT / "data" / "MNIST" / "raw").glob("*.gz"):
        shutil.copy(archive, raw / archive.name)
        os.chmod(raw / archive.name, 0o644)
    return tmp_path / "data"


def write_small_set(root: Path, name: str, train: int = 300, test: int = 100
                    ) -> datasets.Dataset:
    """A small learnable set (each class a bright bar in a place of its own, over noise) in
    the layout of data set ``name`` under ``root``, as .gz archives; returns the set's spec
    with these files' sizes and checksums, which ``datasets.DATASETS`` must hold to accept
    them (the published checksums are kept for the archives or the files, as for the set)."""
    spec = datasets.DATASETS[name]
    raw = root / spec.folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(len(name))
    files = {}
    for split, count in (("train", train), ("test", test)):
        labels = torch.arange(count) % 10
        images = torch.randint(0, 60, (count, 28, 28), generator=generator, dtype=torch.uint8)
        for i, label in enumerate(labels.tolist()):
            images[i, 4 + 2 * label:6 + 2 * label, 4:24] = 255
        for kind, magic, header, body in (
                ("images", 2051, struct.pack(">IIII", 2051, count, 28, 28), images),
                ("labels", 2049, struct.pack(">II", 2049, count), labels.byte())):
            data = header + body.numpy().tobytes()
            packed = gzip.compress(data)
            original = spec.files[(split, kind)]
            (raw / f"{original.name}.gz").write_bytes(packed)
            checksums = (dict(md5=hashlib.md5(data).hexdigest()) if original.md5 else
                         dict(archive_md5=hashlib.md5(packed).hexdigest()))
            files[(split, kind)] = datasets.IdxFile(original.name, len(data), magic, count,
                                                    **checksums)
    return dataclasses.replace(spec, files=files)


@pytest.fixture
def small_sets(tmp_path, monkeypatch) -> Path:
    """A data folder holding small Fashion-MNIST and KMNIST sets that the code accepts."""
    root = tmp_path / "data"
    for name in ("fashion-mnist", "kmnist"):
        monkeypatch.setitem(datasets.DATASETS, name, write_small_set(root, name))
    return root


SMALL_RUN = ["--epochs", "3", "--val-size", "50", "--batch-size", "25"]


@pytest.fixture(scope="session")
def small_runs(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """One tiny train.py run per other data set (on the sets ``small_sets`` writes too): its
    save folder and what it printed. Shared by the train, test and show tests."""
    import train
    root = tmp_path_factory.mktemp("small")
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        for name in ("fashion-mnist", "kmnist"):
            patch.setitem(datasets.DATASETS, name, write_small_set(root / "data", name))
            save_dir = root / name
            result = run_main(train, "--dataset", name, "--data-dir", root / "data",
                              *SMALL_RUN, "--save-dir", save_dir)
            assert result.returncode == 0, result.stderr
            runs[name] = save_dir, result
    return runs


@pytest.fixture(scope="session")
def reader() -> Path:
    """A model that reads digits as well as the default recipe makes them (see
    tests/data/README.md): for the typed-digit set and the drawing page."""
    return ROOT / "tests" / "data" / "lenet5-mnist.pth"


def check_mnist_like(x, peak=0.9):
    """``x`` is framed as MNIST frames a digit: light on black, about 20 px, centred."""
    assert x.shape == (28, 28) and x.min() >= 0 and x.max() <= 1
    ring = torch.ones(28, 28, dtype=torch.bool)
    ring[3:-3, 3:-3] = False
    assert x[ring].mean() < 0.03 and x[~ring].max() > peak      # light digit, dark around it
    rows, cols = (x > 0.05).nonzero().unbind(1)
    extent = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
    assert 18 <= extent <= 22, extent                           # longer side about 20 px
    ys, xs = torch.arange(28.0), torch.arange(28.0)
    com = ((x.sum(1) * ys).sum() / x.sum(), (x.sum(0) * xs).sum() / x.sum())
    assert all(abs(c - 13.5) <= 1 for c in com), com          # centre of mass at the centre
