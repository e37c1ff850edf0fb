"""Careful file output: never overwrite without permission, never leave a half-written file."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


class FileError(Exception):
    """A file that cannot be read, or must not or cannot be written; one line for the user."""


def check_writable(path: Path, force: bool) -> None:
    """Fail early, before any work, when `path` cannot be written."""
    if path.is_dir():
        raise FileError(f"{path}: is a folder, not a file")
    if path.exists() and not force:
        raise FileError(f"{path}: already exists (use -f to overwrite)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileError(f"{path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise FileError(f"{path}: no permission to write in {parent}")


def write_atomic(path: Path, data: bytes, force: bool) -> None:
    """Write to a temporary file beside `path`, then rename it into place."""
    check_writable(path, force)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=parent)
    except OSError as exc:
        raise FileError(f"{path}: cannot write ({exc.strerror})") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make outputs private
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if not force and path.exists():
            raise FileError(f"{path}: already exists (use -f to overwrite)")
        os.replace(tmp, path)
    except OSError as exc:
        raise FileError(f"{path}: cannot write ({exc.strerror})") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_stdout(data: bytes, binary: bool = True) -> None:
    if binary and sys.stdout.isatty():
        raise FileError("refusing to write binary data to a terminal (redirect it, or use -o FILE)")
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def read_input(name: str) -> bytes:
    """Read a whole file, or standard input for '-'."""
    if name == "-":
        return sys.stdin.buffer.read()
    path = Path(name)
    if path.is_dir():
        raise FileError(f"{name}: is a folder, not a file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileError(f"{name}: no such file") from None
    except PermissionError:
        raise FileError(f"{name}: permission denied") from None
    except OSError as exc:
        raise FileError(f"{name}: cannot read ({exc.strerror})") from None
