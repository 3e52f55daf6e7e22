"""Training in several processes, launched by torchrun (one machine or several):

    torchrun --standalone --nproc-per-node 2 train.py

Every process holds the whole data set and draws the same permutation and augmentation from the
shared seed; each takes its slice of every global batch, and DistributedDataParallel averages
the gradients. So ``--batch-size`` means images per optimizer step whatever the number of
processes, and N processes follow the optimization of one, up to the order of floating-point
sums. Without torchrun nothing here is used and ``train.py`` runs as one plain process.
"""
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

import cli
import engine

# How long a collective waits for a process that does not come: long enough for the first
# process to write its files between epochs, short enough that a lost one ends the run.
TIMEOUT = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class World:
    """Where this process stands among the processes of the run (one, without torchrun)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    restarts: int = 0      # times torchrun restarted the processes after a failure
    run_id: str = ""       # torchrun's id of the run, the same across restarts

    @property
    def main(self) -> bool:
        """Only the first process prints and writes files."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ


def world_from_environment() -> World:
    env = os.environ
    return World(rank=int(env["RANK"]), size=int(env["WORLD_SIZE"]),
                 local_rank=int(env["LOCAL_RANK"]), local_size=int(env["LOCAL_WORLD_SIZE"]),
                 restarts=int(env.get("TORCHELASTIC_RESTART_COUNT", "0")),
                 run_id=env["TORCHELASTIC_RUN_ID"])


def start(device_name: str) -> tuple[World, torch.device]:
    """Join torchrun's process group if there is one: NCCL with one GPU per process on CUDA,
    gloo on the CPU. Returns this process's place and device."""
    if not launched_by_torchrun():
        return World(), engine.pick_device(device_name)
    world = world_from_environment()
    device = engine.pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise engine.DeviceError(f"torchrun runs on CUDA GPUs or the CPU, not {device.type}: "
                                 f"pass --device cpu")
    else:
        torch.set_num_threads(threads_per_process(world))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT,
                            store=attempt_store(world), rank=world.rank, world_size=world.size,
                            device_id=device if device.type == "cuda" else None)
    return world, device


def attempt_store(world: World) -> dist.Store:
    """torchrun's key-value store, with the keys of this attempt apart from those of the
    attempts before a restart: with the keys the failed attempt left, the restarted gloo
    processes tried to connect to addresses of dead ones and failed (torch 2.14)."""
    serves = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" and world.main
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          world_size=world.size, is_master=serves, timeout=TIMEOUT)
    return dist.PrefixStore(f"attempt{world.restarts}", store)


def threads_per_process(world: World) -> int:
    """A fair share of this machine's cores, unless OMP_NUM_THREADS says otherwise. When it
    starts several processes on a machine, torchrun sets OMP_NUM_THREADS=1 where it is not
    set: there, 1 counts as not set."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0 and (given != "1" or world.local_size == 1):
        return int(given)
    return max(1, engine.available_cores() // world.local_size)


def lost_peer(error: BaseException) -> bool:
    """Whether ``error`` says that another process of the run is gone: a c10d error, or the
    plain RuntimeError that gloo or NCCL raise when a peer closes its connection. Any other
    error (a bug, running out of memory) is this process's own."""
    text = str(error).lower()
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and ("gloo" in text or "nccl" in text))


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def stop_together(note: cli.StopNote, device: torch.device) -> None:
    """Raise ``cli.Interrupted`` in every process, at the same step, once any of them noted a
    stop signal (SIGTERM wins over SIGINT)."""
    signum = torch.tensor(note.signum or 0, device=device)
    dist.all_reduce(signum, op=dist.ReduceOp.MAX)
    if signum:
        raise cli.Interrupted(int(signum))


def share(state, world: World):
    """The first process's ``state`` (any picklable value) in every process: what one process
    read from a file reaches the others, on this machine or another."""
    if world.size == 1:
        return state
    box = [state if world.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
