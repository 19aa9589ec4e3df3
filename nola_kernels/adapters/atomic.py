"""Atomic file writes: the bytes go to a temporary file beside the target, reach the disk, then
replace the target in one rename, so a crash leaves either the old file or the new one."""

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path, data):
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
