"""The scripts' command-line plumbing: imports change nothing, stops end in one line."""
import importlib
import signal
import subprocess
import sys

import pytest

import bench
import cli
import export
import show
import test
import train
from conftest import (ROOT, run_main, wait_until_stops_are_handled,
                      wait_until_torch_is_loaded)

STOPS = (signal.SIGINT, signal.SIGTERM)


def handlers():
    return [signal.getsignal(s) for s in STOPS]


@pytest.mark.parametrize("script", [train, test, show, bench, export])
def test_importing_a_script_changes_no_signal_handler(script):
    before = handlers()
    importlib.reload(script)          # runs the module's top level again, as an import does
    assert handlers() == before


def test_stops_raise_interrupted_only_inside_the_block():
    before = handlers()
    with pytest.raises(cli.Interrupted) as stop:
        with cli.stops_raise_interrupted():
            assert handlers() != before
            signal.raise_signal(signal.SIGTERM)
    assert stop.value.signum == signal.SIGTERM and str(stop.value) == "SIGTERM"
    assert handlers() == before


def test_ctrl_c_in_a_script_is_one_line_and_status_130():
    class Stopped:
        __name__ = "stopped"

        @staticmethod
        def main(argv):
            raise KeyboardInterrupt

    result = run_main(Stopped)
    assert result.returncode == 130
    assert result.stderr == "stopped by SIGINT\n"


@pytest.mark.parametrize("when", ["starting", "at work"])
@pytest.mark.parametrize("script, args", [
    ("test.py", ["--confusion", "{tmp}/c.png"]), ("show.py", ["--errors", "--out", "{tmp}/e.png"]),
    ("bench.py", ["--quick"]), ("export.py", ["--out", "{tmp}/lenet5.onnx"]),
])
@pytest.mark.processes
def test_ctrl_c_while_a_script_starts_or_works_is_quiet(trained, tmp_path, script, args, when):
    """While torch loads, or once it is loaded and the script is at work (each works for
    seconds): a stop is one line and status 130, never a traceback."""
    if script != "bench.py":       # the others work on the trained checkpoint
        args = ["--checkpoint", trained / "best_model.pth", *args]
    process = subprocess.Popen([sys.executable, str(ROOT / script),
                                *(str(a).format(tmp=tmp_path) for a in args)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_until_stops_are_handled(process)        # torch is still loading for seconds
    if when == "at work":
        wait_until_torch_is_loaded(process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.startswith("stopped by SIGINT") and "Traceback" not in err, err


@pytest.mark.processes
@pytest.mark.parametrize("ending", ["return", "raise SystemExit(3)", "raise KeyboardInterrupt"])
def test_a_script_leaves_its_objects_out_of_the_last_garbage_collection(ending):
    """That collection walks every object torch made, for 0.5-1 s at each exit and stop; the
    objects are frozen out of its sight once the script has run, however it ends."""
    code = ("import atexit, gc, cli\n"
            "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
            f"def main():\n    {ending}\n"
            "cli.run_script(main)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.splitlines()[-1] == "frozen True", (result.stdout, result.stderr)
