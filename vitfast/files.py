"""Files written so that a crash never leaves half of one, what an OS error means to a user, and sizes
written like "5GB".

The bottom of vitfast's layers (no torch, no vitfast imports): checkpoints, tokenizers, the training
state and converted folders all write through :func:`atomic_write` or :func:`staging_dir`.

Staging names and their cleanup: a file is written as ``.NAME.PID.RANDOM.tmp`` beside NAME and a folder
as ``.NAME.PID.RANDOM.staging`` beside it, then renamed over NAME. A process killed with -9 leaves
its entry behind; the next write to NAME removes entries of exactly that pattern whose PID is not a
live process on this machine *and* that nothing has modified for :data:`STALE_AFTER_S` seconds (so a
live writer on another machine sharing the file system, whose PID means nothing here, is left alone
while it writes).

Permissions: what vitfast writes gets the modes any program writing under the user's umask gets
(files 0666 & ~umask, folders 0777 & ~umask), although the temporaries behind atomic writes are
created 0600/0700.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

STALE_AFTER_S = 15 * 60
_NO_SPACE_BYTES = 2**20  # a write that fails with less than this left on its file system ran out of space


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Write `path` through `write(tmp_path)` to a temp file beside it, fsync, then rename over it.

    A crash or a full disk mid-write leaves the previous file intact (byte for byte), never a
    truncated one; the temp file is removed. Errors name `path`: a failed write on a full file system
    (whatever the writing library raised) is an OSError with errno ENOSPC.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_staging_prefix(path), suffix=".tmp")
        os.close(fd)
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # after: a writer may replace the file (safetensors does, 0600)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        plain = _plain_os_error(exc, path)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if plain is None:
            raise
        raise plain from exc
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def staging_dir(dst: Path) -> Iterator[Path]:
    """A new empty folder beside `dst`, with the mode a folder made under the umask gets; removed when
    the block fails (its OSErrors then name `dst`). The caller renames it into place."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(dst)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_staging_prefix(dst), suffix=".staging", dir=dst.parent))
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
    except BaseException as exc:
        plain = _plain_os_error(exc, dst)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if plain is None:
            raise
        raise plain from exc


def remove_stale_staging(path: Path) -> list[Path]:
    """Remove the staging files and folders of `path` that a killed process left (see the module's
    docstring for the rule); returns what was removed."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d+)\.[^/]+\.(?:tmp|staging)")
    removed = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or _alive(int(match.group(1))) or time.time() - _last_modified(entry) < STALE_AFTER_S:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def describe_os_error(exc: OSError, destination: str = "--output") -> str:
    """One line for a user: the path `exc` names, what is wrong with it, and the fix (`destination`
    names the flag or argument where the user chooses where output goes)."""
    path = exc.filename if exc.filename is not None else "the output"
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on {path}: free space or choose another {destination}."
    if code == errno.EROFS:
        return f"{path} is on a read-only file system: choose another {destination}."
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied: {path}; change its permissions or choose another {destination}."
    if code in (errno.EEXIST, errno.ENOTDIR):
        return (f"{path}: a file is where a folder is needed ({exc.strerror}); move the file away or choose "
                f"another {destination}.")
    if code == errno.EISDIR:
        return f"{path} is a folder where a file is needed; choose another path."
    if code == errno.ENOENT:
        return f"{path} does not exist; check the path."
    if code is None or exc.strerror is None:  # raised with a message of its own
        return str(exc)
    return f"{path}: {exc.strerror}."


def parse_size(size: int | str) -> int:
    """Bytes in a size written like "5GB", "500MB" or "2GiB" (an int is taken as bytes)."""
    if isinstance(size, int):
        return size
    text = size.strip().upper()
    for unit, factor in (("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10), ("GB", 10**9), ("MB", 10**6),
                         ("KB", 10**3), ("B", 1)):
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * factor)
            except ValueError:
                break
    raise ValueError(f"cannot read the size {size!r}; write it like 5GB, 500MB or 2GiB.")


def _staging_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    """Whether a process `pid` runs on this machine."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # none; a number no process can have
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _last_modified(entry: Path) -> float:
    """The newest modification time of `entry` and, for a folder, what it holds."""
    try:
        times = [entry.lstat().st_mtime]
        if entry.is_dir() and not entry.is_symlink():
            times += [p.lstat().st_mtime for p in entry.rglob("*")]
    except OSError:
        return time.time()
    return max(times)


def _plain_os_error(exc: BaseException, dst: Path) -> OSError | None:
    """What a failed write of `dst` raises instead of `exc`, so that the error names `dst` and never a
    staging name: an OSError without a path or naming a staging entry is re-raised naming `dst`, and a
    failure of the writing library (safetensors, torch.save word a full disk their own way) on a file
    system with almost no space left is an ENOSPC. None: re-raise `exc` as it is."""
    if isinstance(exc, OSError):
        staging = str(dst.parent / f".{dst.name}.")
        if exc.errno is None or (exc.filename is not None and not str(exc.filename).startswith(staging)):
            return None
        return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(dst))
    if not isinstance(exc, Exception):  # Ctrl-C, SystemExit
        return None
    try:
        if shutil.disk_usage(dst.parent).free >= _NO_SPACE_BYTES:
            return None
    except OSError:
        return None
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
