"""Atomic file writes: the bytes go to a temporary file beside the target, reach the disk, then
replace the target in one rename, so a crash leaves either the old file or the new one.

The temporary file is created with mode 0666 less the umask, as open() would create the target
itself. Its name, ".<target>.<host>.<pid>.<random>.tmp", records the writing process: a save
removes the temporary files of the same target that this host's processes left behind (a save
killed mid-write). A process ID says nothing about another host's processes (a folder shared
over the network), so temporary files of other hosts, and those of the older
".<target>.<pid>.<random>.tmp" and ".<target>.<8 characters>.tmp" forms, are removed only once
they are STALE_AFTER_SECONDS old: no save takes that long."""

import os
import re
import secrets
import socket
import time
from pathlib import Path

STALE_AFTER_SECONDS = 24 * 3600


def _host():
    # The name as it can stand in a file name and be told apart from the fields beside it.
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def atomic_write_bytes(path, data):
    path = Path(path)
    remove_stale_temporaries(path)
    temporary = path.with_name(f".{path.name}.{_host()}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _temporary_pattern(path):
    return re.compile(
        rf"\.{re.escape(path.name)}\.(?:(?:(?P<host>[A-Za-z0-9-]+)\.)?(?P<pid>\d+)\.[0-9a-f]{{16}}|[A-Za-z0-9_]{{8}})\.tmp"
    )


def stale_temporaries(path):
    """Temporary files of saves to `path` that no running process is writing."""
    path = Path(path)
    pattern = _temporary_pattern(path)
    try:
        candidates = list(path.parent.iterdir())
    except OSError:
        return []
    return [
        candidate
        for candidate in candidates
        if (match := pattern.fullmatch(candidate.name)) is not None and _abandoned(candidate, match)
    ]


def _abandoned(candidate, match):
    if match["host"] == _host():
        return not _running(int(match["pid"]))
    try:
        return time.time() - candidate.stat().st_mtime > STALE_AFTER_SECONDS
    except OSError:
        return False  # gone already


def remove_stale_temporaries(path):
    for temporary in stale_temporaries(path):
        temporary.unlink(missing_ok=True)


def _running(pid):
    if pid == os.getpid():
        return True  # another thread of this process may be writing it
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False  # gone, or a number no process can have
    except PermissionError:
        return True  # another user's process
    return True
