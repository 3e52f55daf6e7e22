"""The test tiers: ``-m 'not processes'`` runs only tests that start no process, because
conftest.py fails any test that starts one without the marker."""
import subprocess
import sys

import pytest


def test_a_test_without_the_marker_cannot_start_a_process():
    with pytest.raises(AssertionError, match="starts a process: mark it @pytest.mark.processes"):
        subprocess.run([sys.executable, "-c", "pass"])


@pytest.mark.processes
def test_a_test_with_the_marker_can():
    assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0
