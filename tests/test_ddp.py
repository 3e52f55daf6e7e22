"""torchrun: N gloo processes train the model of one process, a killed worker costs at most an
epoch, a run continues on another number of processes, and two "nodes" on 127.0.0.1 equal one.
Every run here is a real torchrun with real processes."""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import ddp
import test
import train
from conftest import ROOT, run_main

# About a second an epoch with two processes; the last batch (2,751 % 32 = 31 images) splits
# unevenly, 16 and 15.
RUN = ["--subset", "3001", "--epochs", "2", "--batch-size", "32", "--device", "cpu"]
# Float sums in another order (a gradient summed over two slices, then averaged by DDP) differ
# from one process's in the last bits, about 1e-7 relative; over this run's 172 AdamW steps the
# weights drifted about 1e-7 apart (measured). A real mistake (a slice seen twice, a wrong loss
# weight) moves them by 1e-3 or more.
TOLERANCE = 1e-5
# bfloat16 keeps 8 bits of a number: sums in another order differ by up to 0.4 % of a value,
# and weights trained through it drifted 3e-5 apart in 86 SGD steps (measured).
AMP_TOLERANCE = 1e-3


def torchrun(*args, nproc=2, timeout=300, **kwargs):
    command = [sys.executable, "-m", "torch.distributed.run", *map(str, args)]
    if not any(str(a).startswith("--nnodes") for a in args):
        command[3:3] = ["--standalone", f"--nproc-per-node={nproc}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")   # torchrun's own default, without its banner
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def weights(path):
    checkpoint = torch.load(path, weights_only=True)
    return {f"{part}.{name}": value for part in ("model", "train_weights")
            for name, value in (checkpoint.get(part) or {}).items()}


def largest_difference(a, b) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)


def history(save_dir) -> str:
    return (save_dir / "history.csv").read_text()


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("one")
    result = run_main(train, *RUN, "--save-dir", save_dir)
    assert result.returncode == 0, result.stderr
    return save_dir


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("two")
    result = torchrun("train.py", *RUN, "--save-dir", save_dir)
    assert result.returncode == 0, result.stderr
    return save_dir, result


@pytest.mark.processes
def test_two_processes_train_the_model_of_one(one_process, two_processes):
    save_dir, result = two_processes
    lines = result.stdout.splitlines()
    assert lines[0].endswith("for 2 epochs, 2 processes of 1 thread"), lines[0]
    assert len([line for line in lines if line.startswith("test accuracy")]) == 1   # rank 0 only
    assert largest_difference(one_process / "last.pth", save_dir / "last.pth") < TOLERANCE
    for one, two in zip(*(history(d).splitlines()[1:] for d in (one_process, save_dir))):
        a, b = (list(map(float, row.split(","))) for row in (one, two))
        assert all(abs(x - y) < 1e-4 for x, y in zip(a, b)), (one, two)   # counts, losses, lr


@pytest.mark.processes
def test_the_checkpoint_reads_as_one_process_made_it(two_processes):
    save_dir, result = two_processes
    best = torch.load(save_dir / "best_model.pth", weights_only=True)
    assert best["processes"] == 2
    assert not any(name.startswith("module.") for name in best["model"])
    tested = run_main(test, "--checkpoint", save_dir / "best_model.pth", "--json",
                      "--confusion", save_dir / "confusion.png")
    assert tested.returncode == 0, tested.stderr
    errors = int(result.stdout.splitlines()[-1].split("(")[1].split()[0])   # "(628 errors"
    assert json.loads(tested.stdout)["errors"] == errors


@pytest.mark.processes
def test_a_killed_worker_is_restarted_and_the_run_ends_as_if_never_interrupted(
        tmp_path, two_processes):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", "--max-restarts=1", "train.py", *RUN,
               "--save-dir", str(tmp_path)]
    run = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "last.pth").exists():       # epoch 1 is saved: kill during epoch 2
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.02)
    workers = subprocess.run(["pgrep", "-P", str(run.pid), "-f", "train.py"],
                             capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(workers[1]), signal.SIGKILL)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    assert "resuming" in out and "after epoch" in out, out
    reference = two_processes[0]
    assert weights(tmp_path / "last.pth").keys() == weights(reference / "last.pth").keys()
    assert largest_difference(tmp_path / "last.pth", reference / "last.pth") == 0
    assert history(tmp_path) == history(reference)


@pytest.mark.processes
def test_a_run_continues_on_another_number_of_processes(tmp_path):
    """Begun on one process, continued on two, it equals the run continued on one (with SGD,
    StepLR and bfloat16 autocast: the other recipes of train.py work under DDP too)."""
    start = ["--subset", "3001", "--batch-size", "32", "--scheduler", "step", "--optimizer",
             "sgd", "--amp"]
    first = tmp_path / "first"
    assert run_main(train, *start, "--epochs", "1", "--save-dir", first).returncode == 0
    shutil.copytree(first, tmp_path / "on_two")
    shutil.copytree(first, tmp_path / "on_one")
    two = torchrun("train.py", "--resume", "--epochs", "2", "--save-dir", tmp_path / "on_two")
    assert two.returncode == 0, two.stderr
    assert "resuming" in two.stdout and "2 processes" in two.stdout
    one = run_main(train, "--resume", "--epochs", "2", "--save-dir", tmp_path / "on_one")
    assert one.returncode == 0, one.stderr
    assert largest_difference(tmp_path / "on_two" / "last.pth",
                              tmp_path / "on_one" / "last.pth") < AMP_TOLERANCE


def free_port() -> int:
    """A free port for a rendezvous, below Linux's ephemeral range (32768-60999 by default):
    every outgoing connection and every bind to port 0 (other tests' torchrun, gloo) draws its
    port from that range. One of those could take a port from it between this check and
    torchrun's bind; the node meant to host the rendezvous would then join as a client of
    nobody and wait (the likely cause of one hang of the two-node test in a full run)."""
    while True:
        port = random.randrange(20_000, 32_768)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:         # taken: try another
                continue
            return port


@pytest.mark.processes
def test_two_nodes_on_one_machine_equal_one_node_of_two_processes(tmp_path, two_processes):
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={rank}",
         "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
         "--rdzv-id=test", "train.py", *RUN, "--save-dir", str(tmp_path / f"node{rank}")],
        cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        results = [node.communicate(timeout=180) for node in nodes]
    except subprocess.TimeoutExpired:       # stopped as a person would, to see what each said
        for node in nodes:
            node.send_signal(signal.SIGINT)
        pytest.fail(f"the nodes did not finish: {[node.communicate(timeout=60) for node in nodes]}")
    assert [node.returncode for node in nodes] == [0, 0], results
    # c10d numbers the nodes itself (by host name, then process id), whatever --node-rank says;
    # the node that got rank 0 alone talks and writes.
    talked = [rank for rank in (0, 1) if "test accuracy" in results[rank][0]]
    assert len(talked) == 1 and results[1 - talked[0]][0] == "", results
    # one process per machine: torchrun leaves OMP_NUM_THREADS alone, so the 1 given is kept
    assert "2 processes of 1 thread" in results[talked[0]][0].splitlines()[0]
    assert not (tmp_path / f"node{1 - talked[0]}").exists()
    # Measured bit-identical here; the tolerance covers a transport that sums in another order.
    reference = two_processes[0]
    assert largest_difference(tmp_path / f"node{talked[0]}" / "last.pth",
                              reference / "last.pth") < TOLERANCE


@pytest.mark.processes
def test_a_batch_that_does_not_split_is_refused_in_one_line(tmp_path):
    result = torchrun("train.py", "--subset", "500", "--epochs", "1", "--batch-size", "33",
                      "--save-dir", tmp_path)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines()
            if "error:" in line and "torch" not in line]
    assert ours == ["train.py: error: --batch-size 33 does not split evenly over 2 processes: "
                    "pick a multiple of 2"], result.stderr


@pytest.mark.processes
@pytest.mark.parametrize("signum, to", [(signal.SIGTERM, "torchrun"), (signal.SIGINT, "all"),
                                        (signal.SIGTERM, "one worker")],
                         ids=["SIGTERM to torchrun", "Ctrl-C in its terminal",
                              "SIGTERM to one worker"])
def test_a_stop_ends_every_worker_cleanly(tmp_path, signum, to):
    """Ctrl-C in a terminal reaches torchrun and its workers at once; a SIGTERM reaches
    torchrun, which passes it on; a SIGTERM to one worker alone (a scheduler stopping one
    process) stops them all at the same step, since the processes agree on stopping."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", "train.py", *RUN, "--epochs", "20",
               "--save-dir", str(tmp_path)]
    run = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "last.pth").exists():
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.02)
    workers = subprocess.run(["pgrep", "-P", str(run.pid), "-f", "train.py"],
                             capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers       # else the checks below would hold vacuously
    if to == "all":
        os.killpg(run.pid, signum)
    else:
        os.kill(run.pid if to == "torchrun" else int(workers[-1]), signum)
    out, err = run.communicate(timeout=120)
    name = signal.Signals(signum).name
    stops = [line for line in err.splitlines() if line.startswith(f"stopped by {name}")]
    assert len(stops) == 1 and "last.pth holds epoch" in stops[0], err      # rank 0 alone
    assert 'train.py", line' not in err, err     # torchrun's own traceback, none from a rank
    saved = torch.load(tmp_path / "last.pth", weights_only=True)["epoch"]
    assert f"holds epoch {saved} of 20" in stops[0]
    assert run.returncode != 0       # torchrun reports the stopped workers as a failure
    for pid in workers:                                  # no process left behind
        assert not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().split()[2] == "Z"


@pytest.mark.processes
def test_a_node_that_never_comes_ends_the_rendezvous_in_bounded_time(tmp_path):
    started = time.monotonic()
    result = torchrun("--nnodes=2", "--node-rank=0", "--nproc-per-node=1",
                      "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
                      "--rdzv-conf=join_timeout=2", "train.py", "--save-dir", tmp_path,
                      timeout=120)
    assert result.returncode != 0 and time.monotonic() - started < 60
    assert "RendezvousTimeoutError" in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("given, local_size, expected", [
    (None, 2, "share"), ("1", 2, "share"), ("1", 1, "given"), ("3", 2, "given")])
def test_each_process_gets_a_fair_share_of_the_cores_unless_told(monkeypatch, given,
                                                                 local_size, expected):
    if given is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", given)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))   # 8 cores
    threads = ddp.threads_per_process(ddp.World(size=local_size, local_size=local_size))
    assert threads == (8 // local_size if expected == "share" else int(given))


def test_only_a_lost_peer_is_reported_as_one():
    """A gloo read error is a peer gone; a bug or out-of-memory in this process is not, and
    keeps its own traceback."""
    gone = RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:56024: "
                        "Connection reset by peer")
    assert ddp.lost_peer(gone) and ddp.lost_peer(torch.distributed.DistNetworkError("x"))
    assert not ddp.lost_peer(RuntimeError("CUDA out of memory"))
    assert not ddp.lost_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_a_bug_under_torchrun_keeps_its_traceback(tmp_path, monkeypatch):
    """With several processes, an error of this process's own is not passed off as a lost
    peer."""
    monkeypatch.setattr(ddp, "start", lambda device: (ddp.World(rank=0, size=2),
                                                      torch.device("cpu")))
    monkeypatch.setattr(ddp, "stop", lambda: None)

    def bug(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    monkeypatch.setattr(train, "make_batches", bug)
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        train.main(["--save-dir", str(tmp_path), "--epochs", "1"])
