"""Files checked against their sha256, each hashed once per process.

A committee is often opened twice in one process (lsmha-serve checks the directory before it
binds, then loads from what it checked; verify opens the export on several runtimes). A file is
hashed the first time it is checked and its digest remembered under its identity (path, inode,
size, modification time): a later check of the same unchanged file costs a `stat`, and a file
that was replaced or rewritten since is hashed again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from . import files

_digests: dict[tuple[str, int, int, int], str] = {}


def _identity(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return (str(path), st.st_ino, st.st_size, st.st_mtime_ns)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of the file at `path`, hashed once per process while the file is unchanged."""
    key = _identity(Path(path).resolve())
    digest = _digests.get(key)
    if digest is None:
        digest = _digests[key] = files.sha256_file(key[0])
    return digest


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes already in memory."""
    return hashlib.sha256(data).hexdigest()


def read_checked(path: str | os.PathLike, expected: str, what: str) -> bytes:
    """The content of the file at `path` once it hashes to `expected`: one read serves the check
    and the caller's parse. Hashed once per process as `file_sha256` is (the digests are shared);
    ValueError / FileNotFoundError naming `what` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} is missing")
    key = _identity(path.resolve())
    data = path.read_bytes()
    digest = _digests.get(key)
    if digest is None:
        digest = _digests[key] = sha256_bytes(data)
    if digest != expected:
        raise ValueError(f"{what} does not match its sha256 (modified or corrupt); refusing it")
    return data


def check_sha256(path: str | os.PathLike, expected: str, what: str) -> Path:
    """`path` once its content hashes to `expected` (`file_sha256`), else ValueError naming `what`;
    FileNotFoundError naming `what` when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} is missing")
    if file_sha256(path) != expected:
        raise ValueError(f"{what} does not match its sha256 (modified or corrupt); refusing it")
    return path
