"""Writing files and directories so that an interruption leaves the old version or the new one, never a mix.

- `write_atomic` / `write_text_atomic` / `write_json_atomic`: a file is written beside its destination, then
  renamed over it.
- `replace_directory`: a directory (an artifact, a drift report) is built in a staging sibling and swapped in by
  rename. While it runs, a lock beside the destination keeps a second writer out. Staging siblings left by a
  killed process are removed by the next writer, unless they hold files that are not ours.
- `cache_root`: the one directory of caches shared by every artifact (calibrations, TensorRT timing caches,
  OpenVINO compiled models).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Callable

from .errors import UserError

_STAGING_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<kind>partial|old)$")
# What this process is writing right now, for `exit_on_signal` to remove.
_STAGING: set[Path] = set()
_LOCKS: set[Path] = set()


def cache_root() -> Path:
    return Path(os.environ.get("GROUPVIT_EDGE_CACHE", Path.home() / ".cache" / "groupvit-edge"))


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(temporary)` on a hidden sibling of `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        _give_default_permissions(temporary, 0o666)
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda temporary: temporary.write_text(text))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda temporary: temporary.write_bytes(data))


def write_json_atomic(path: str | Path, data) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _give_default_permissions(path: Path, mode: int) -> None:
    """mkstemp/mkdtemp create owner-only files; what we write should get the permissions `open` would give."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(mode & ~umask)


@contextlib.contextmanager
def replace_directory(destination: str | Path, *, ours: Callable[[Path], set[Path] | None],
                      what: str = "directory", force: bool = False, announce: bool = True,
                      log=print) -> Iterator[Path]:
    """Yield an empty staging directory; when the block succeeds it becomes `destination`, otherwise it vanishes.

    `ours(directory)` names the entries of an existing directory that a previous run of the same kind wrote
    (relative paths), or None when the directory is not of that kind. An existing destination is replaced only
    if it is empty or of that kind; entries that are not ours are refused, or with `force` carried over into the
    new directory. A lock beside the destination refuses a concurrent writer. With `announce`, replacing an
    existing one is logged.
    """
    destination = Path(destination).absolute()
    destination.parent.mkdir(parents=True, exist_ok=True)
    with _lock(destination, what):
        remove_stale_staging(destination, ours, log)
        foreign = check_destination(destination, ours, what, force,
                                    replacing=(lambda existing: log(f"replacing the {what} in {existing}"))
                                    if announce else None)
        staging = destination.parent / f".{destination.name}.{os.getpid()}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        _give_default_permissions(staging, 0o777)
        _STAGING.add(staging)
        try:
            yield staging
            with _termination_deferred():
                _swap_in(staging, destination, foreign, log)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            _STAGING.discard(staging)


def check_destination(destination: Path, ours, what: str, force: bool, replacing=None) -> list[str]:
    """Entries of an existing destination that are not ours; a UserError when it may not be written.
    `replacing(destination)` is called when an existing one of ours will be replaced."""
    destination = Path(destination)
    if not destination.exists():
        return []
    if not destination.is_dir():
        raise UserError(f"{destination} exists and is a file: choose another output directory")
    entries = sorted(entry.name for entry in destination.iterdir())
    if not entries:
        return []
    owned = ours(destination)
    if owned is None:
        raise UserError(f"{destination} is not empty and is not a groupvit-edge {what}: choose another output "
                        f"directory (nothing was written)")
    top_level = {Path(path).parts[0] for path in owned}
    foreign = [name for name in entries if name not in top_level]
    if replacing is not None:
        replacing(destination)
    if foreign and not force:
        shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
        raise UserError(f"{destination} holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} that are not "
                        f"part of the {what} ({shown}): move them away, choose another output directory, or pass "
                        f"--force to keep them beside the new {what}")
    return foreign


def _swap_in(staging: Path, destination: Path, foreign: list[str], log) -> None:
    if not destination.exists():
        staging.rename(destination)
        return
    # The user's entries only ever sit in the retired copy, never in a staging directory, so that a run killed
    # mid-swap leaves them where `remove_stale_staging` will not delete them.
    retired = destination.parent / f".{destination.name}.{os.getpid()}.old"
    shutil.rmtree(retired, ignore_errors=True)
    destination.rename(retired)
    staging.rename(destination)
    for name in foreign:
        (retired / name).rename(destination / name)
    if foreign:
        log(f"kept {', '.join(foreign)} in {destination} (not part of it; --force)")
    shutil.rmtree(retired, ignore_errors=True)


def all_ours(directory: Path) -> set[Path]:
    """`ours` for directories made only by groupvit-edge (cache entries): every entry may be replaced."""
    return {Path(entry.name) for entry in Path(directory).iterdir()}


def remove_stale_staging(destination: Path, ours, log=print) -> None:
    """Remove `.NAME.PID.partial|old` siblings of `destination` left by processes that no longer run. A retired
    copy that still holds entries that are not ours (a --force swap that was killed) is kept and named."""
    for sibling in destination.parent.glob(f".{destination.name}.*"):
        match = _STAGING_NAME.match(sibling.name)
        if not match or match["name"] != destination.name or not sibling.is_dir() or _alive(int(match["pid"])):
            continue
        if match["kind"] == "old":
            owned = {Path(p).parts[0] for p in (ours(sibling) or ())}
            if any(entry.name not in owned for entry in sibling.iterdir()):
                log(f"left {sibling} in place: an interrupted run left it and it holds files that are not ours")
                continue
        shutil.rmtree(sibling, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _lock(destination: Path, what: str) -> Iterator[None]:
    path = destination.parent / f".{destination.name}.lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise UserError(f"another groupvit-edge process is writing {destination} right now: wait for it to "
                            f"finish or choose another output directory") from None
        _LOCKS.add(path)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            _LOCKS.discard(path)
            fcntl.flock(handle, fcntl.LOCK_UN)


def exit_on_signal(signum, frame) -> None:
    """SIGTERM handler: remove what this process was staging, release its locks, exit 128 + signum.

    Exiting here, rather than raising into whatever runs (a C++ exporter or calibrator may not unwind through a
    Python exception), always cleans up. The swap into place defers the signal, so it never sees half a swap."""
    for staging in list(_STAGING):
        shutil.rmtree(staging, ignore_errors=True)
    for lock in list(_LOCKS):
        lock.unlink(missing_ok=True)
    sys.stderr.write("aborted\n")
    sys.stderr.flush()
    os._exit(128 + signum)


@contextlib.contextmanager
def _termination_deferred() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def tree_size(paths: Iterable[Path]) -> int:
    """Bytes of files and of everything under directories."""
    total = 0
    for path in paths:
        if path.is_dir():
            total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        elif path.is_file():
            total += path.stat().st_size
    return total


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# (device, inode, size, mtime, ctime) → sha256. Any write changes ctime, which no user can set back, so a file
# that still has the same identity has the same bytes: opening an artifact again in one process hashes nothing.
_VERIFIED: dict[tuple, str] = {}


def sha256_file_cached(path: Path) -> str:
    stat = path.stat()
    identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if identity not in _VERIFIED:
        _VERIFIED[identity] = sha256_file(path)
    return _VERIFIED[identity]
