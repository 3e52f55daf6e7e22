"""Shared test helpers: run the scripts the way a person does, and one small trained model."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# A smoke run: small enough for seconds on 2 cores, big enough to learn something real.
SMOKE = ["--subset", "3000", "--epochs", "2", "--batch-size", "64"]


def run(script: str, *args, cwd=ROOT, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """``python script args...`` as a person would type it, output captured as text."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


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


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A save folder after one smoke run of train.py (shared by the test.py and show.py tests)."""
    save_dir = tmp_path_factory.mktemp("trained")
    result = run("train.py", *SMOKE, "--save-dir", save_dir)
    assert result.returncode == 0, result.stderr
    return save_dir


@pytest.fixture
def data_copy(tmp_path) -> Path:
    """A private copy of the shipped archives (extracted files left out), safe to damage."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for archive in (ROOT / "data" / "MNIST" / "raw").glob("*.gz"):
        shutil.copy(archive, raw / archive.name)
        os.chmod(raw / archive.name, 0o644)
    return tmp_path / "data"
