"""Run directories: where each run's log lives (light: no torch).

Every directory ftwatch writes into (the state directory and its registry, ``log_dir``, each run
directory) is checked before use, so another local user cannot steer what ftwatch writes: it
must not be a symbolic link planted by someone else, must belong to the user running ftwatch, and
must not be writable by others. A shared place such as ``/tmp`` (owned by root, sticky) is fine
where ftwatch only creates directories of its own in it (``log_dir``, the state directory), never
where it writes files. A refusal is a :class:`PermissionError` naming the path and the reason (one
line). Directories ftwatch creates, each missing parent included, are private (0700) whatever
the umask.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import time
from pathlib import Path

from ftwatch.common.safe_text import safe

#: Names ``<name>-<stamp>-<n>`` tried for runs started in the same second before random suffixes.
SAME_SECOND_NUMBERS = 1000
#: Random suffixes tried after those (a crowded directory, or someone taking the names first).
RANDOM_TRIES = 100


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _private_group(gid: int) -> bool:
    """True for the user's own private group (the "user private group" of Debian and Ubuntu,
    whose umask 002 makes every new directory group-writable): the user's primary group, named
    after the user, with no other member. Its write bit gives nobody else anything."""
    try:
        import grp
        import pwd

        user = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(gid)
    except (ImportError, KeyError):
        return False
    return gid == os.getegid() and group.gr_name == user and set(group.gr_mem) <= {user}


def _refuse(path: Path, what: str, reason: str) -> PermissionError:
    return PermissionError(errno.EPERM, f"refusing to use this {what}: {reason}", str(path))


def check_dir(path: str | os.PathLike[str], what: str, *, shared_ok: bool = False) -> Path:
    """Refuse (``PermissionError``) a directory another user could steer ftwatch's writes through.

    ``what`` names it in the message ("state directory", "log_dir", ...). Refused: a symbolic link
    owned by another user than you or root; a directory (the link's target too) owned by another
    user; one that others may write into. With ``shared_ok`` (a directory ftwatch only creates its
    own private directories in), a sticky directory owned by root, like ``/tmp``, is accepted.
    """
    path = Path(path)
    uid = os.geteuid()
    link = os.lstat(path)
    is_link = stat.S_ISLNK(link.st_mode)
    if is_link and link.st_uid not in (uid, 0):
        raise _refuse(path, what, f"it is a symbolic link owned by {_owner(link.st_uid)}")
    info = os.stat(path)
    seen = f"it (a symbolic link to {os.path.realpath(path)})" if is_link else "it"
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, f"this {what} is not a directory", str(path))
    shared = shared_ok and info.st_uid == 0 and bool(info.st_mode & stat.S_ISVTX)
    if info.st_uid != uid and not shared:
        raise _refuse(path, what, f"{seen} is owned by {_owner(info.st_uid)}; ftwatch writes only into "
                                  f"directories of your own")
    writable_by_others = info.st_mode & stat.S_IWOTH or (info.st_mode & stat.S_IWGRP
                                                        and not _private_group(info.st_gid))
    if writable_by_others and not (shared_ok and info.st_mode & stat.S_ISVTX):
        mode = stat.S_IMODE(info.st_mode)
        raise _refuse(path, what, f"{seen} is writable by {'others' if mode & stat.S_IWOTH else 'its group'} "
                                  f"(mode {mode:04o}), who could replace ftwatch's files: chmod go-w it")
    return path


def make_private_dirs(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` and each missing parent, every one 0700 whatever the umask (existing ones
    are left as they are)."""
    path = Path(path)
    missing: list[Path] = []
    level = path
    while not os.path.lexists(level) and level != level.parent:
        missing.append(level)
        level = level.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue  # made meanwhile (another rank, another run): the caller checks what it uses
        os.chmod(directory, 0o700)  # the umask may have taken bits from the owner too
    return path


def private_dir(path: str | os.PathLike[str], what: str, *, shared_ok: bool = False) -> Path:
    """``path`` created if missing (private, parents too) and checked with :func:`check_dir`."""
    make_private_dirs(path)
    return check_dir(path, what, shared_ok=shared_ok)


def _dir_name(name: str) -> str:
    """``name`` fit for one path component (no separators, no control characters)."""
    cleaned = safe(str(name), one_line=True).replace(os.sep, "-").replace("\0", "")
    if os.altsep:
        cleaned = cleaned.replace(os.altsep, "-")
    return cleaned.strip(". ") or "run"


def new_run_dir(log_dir: str | os.PathLike[str], name: str) -> Path:
    """Create ``log_dir/<name>-<YYYYmmdd-HHMMSS>`` (private to the user) and return it.

    Runs started in the same second get ``-1``, ``-2``, ... after the time, then a random suffix:
    the name is always new, however many start at once. ``log_dir`` is created private and
    checked (:func:`check_dir`); a refusal is a ``PermissionError`` naming it.
    """
    base = private_dir(log_dir, "log_dir", shared_ok=True)
    stamp = f"{_dir_name(name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    numbered = (stamp + (f"-{n}" if n else "") for n in range(SAME_SECOND_NUMBERS))
    import secrets  # (here: only a new run draws a name)

    drawn = (f"{stamp}-{secrets.token_hex(4)}" for _ in range(RANDOM_TRIES))
    for candidate_name in itertools.chain(numbered, drawn):
        candidate = base / candidate_name
        try:
            os.mkdir(candidate, 0o700)  # exclusive: never an existing directory or a planted link
        except FileExistsError:
            continue
        os.chmod(candidate, 0o700)
        return candidate
    raise FileExistsError(errno.EEXIST, f"no free run directory name for {stamp} after "
                                        f"{SAME_SECOND_NUMBERS + RANDOM_TRIES} tries", str(base))


def rank_dir(run_dir: str | os.PathLike[str], rank: int) -> Path:
    """Where rank ``rank`` of a multi-process run keeps its log: ``run_dir/rank<N>``."""
    return Path(run_dir) / f"rank{int(rank)}"


def distributed_rank() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from the environment ``torchrun`` sets (``0, 0, 1`` alone)."""
    def number(name: str, default: int) -> int:
        try:
            return int(os.environ.get(name, default))
        except ValueError:
            return default
    return number("RANK", 0), number("LOCAL_RANK", 0), max(1, number("WORLD_SIZE", 1))


def shared_run_dir(log_dir: str | os.PathLike[str], name: str, launcher_pid: int, launcher_started: float) -> Path:
    """The run directory every local rank of one ``torchrun`` job agrees on without talking:
    named after the launcher (the ranks' parent) and the time it started.

    Both ``log_dir`` and the run directory are checked (:func:`check_dir`): the ranks share it,
    so it may exist already, but it must be the user's own and private."""
    base = private_dir(log_dir, "log_dir", shared_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(launcher_started))
    path = base / f"{_dir_name(name)}-{stamp}-p{launcher_pid}"
    return private_dir(path, "run directory")
