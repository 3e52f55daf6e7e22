"""Write a file so that readers, crashes and kill -9 only ever see the old or the new version;
make a folder that a failure takes back."""
import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

# mkstemp creates files readable by their owner only; give ours the usual permissions instead.
_UMASK = os.umask(0)
os.umask(_UMASK)
_MODE = 0o666 & ~_UMASK


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it over ``path``.

    The folder is created if it does not exist yet.
    The temporary file lives in the same directory so that ``os.replace`` is a rename on one
    file system, which POSIX and Windows both make atomic. On any failure (a full disk, a
    signal turned into an exception) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def new_folder(path: str | os.PathLike) -> Iterator[Path]:
    """``path`` as a folder, made with its parents where missing. When the block fails, the
    folders it made go again where they are still empty: a mistyped path leaves nothing."""
    path = Path(path)
    made = [folder for folder in (path, *path.parents) if not folder.exists()]
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
