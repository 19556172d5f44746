"""Atomic file writes: a killed run never leaves a half file that a later run would trust."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

# Read once at import: os.umask can only be read by setting it, which races with threads.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; it becomes ``target`` if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                         suffix=".tmp")
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        # After the writer: mkstemp's 0600 would make outputs private, and some writers
        # (safetensors) replace the file, and its mode with it.
        os.chmod(temporary_path, 0o666 & ~_UMASK)
        os.replace(temporary_path, target)
    finally:
        temporary_path.unlink(missing_ok=True)


def write_atomic(target: str | Path, writer: Callable[[Path], object]) -> Path:
    with atomic_path(target) as temporary:
        writer(temporary)
    return Path(target)


def write_text(target: str | Path, text: str) -> Path:
    return write_atomic(target, lambda path: path.write_text(text))


def write_json(target: str | Path, payload: object) -> Path:
    return write_text(target, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).hexdigest()


# A file that failed its integrity check is renamed with this suffix: kept for inspection, out
# of the way of whatever rebuilds it.
CORRUPT_SUFFIX = ".corrupt"


def set_aside(path: Path) -> Path:
    """Rename ``path`` to ``path`` + ``CORRUPT_SUFFIX``; fine if another process did first."""
    target = path.with_name(path.name + CORRUPT_SUFFIX)
    with contextlib.suppress(FileNotFoundError):
        path.replace(target)
    return target
