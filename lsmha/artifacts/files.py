"""Files an artifact is made of: sha256 hashes, paths confined to their directory,
JSON documents written atomically and read with their format checked."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..models.file_kind import file_kind


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_inside(root: Path, relative: str) -> Path:
    """`root / relative`, refusing absolute paths and paths that escape `root`."""
    root = root.resolve()
    candidate = (root / relative).resolve()
    if Path(relative).is_absolute() or not candidate.is_relative_to(root):
        raise ValueError(f"path {relative!r} leaves the directory {root}; refusing to load it")
    return candidate


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write `data` at `path` via a temporary file and a rename: never half-written."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a signal: no half-written temporary left behind
        raise
    return path


def _json_value(value: Any) -> Any:
    """What `json` cannot write itself: a path as its text, numpy (or torch) values as numbers and lists."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write a value of type {type(value).__name__} as JSON: {value!r:.80}")


def write_json_atomic(path: str | os.PathLike, doc: Any) -> Path:
    """The one JSON file writer of lsmha: `doc` indented, with a trailing newline, at `path` (parent
    directories created) via a temporary file and a rename, so a reader never sees it half-written.
    Paths are written as text, numpy values as numbers and lists; any other object is a TypeError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes_atomic(path, (json.dumps(doc, indent=2, default=_json_value) + "\n").encode())


def read_json_document(path: str | os.PathLike, default_name: str, fmt: str, hint: str = "") -> tuple[Path, dict]:
    """The JSON document at `path` (or `path / default_name` for a directory) and its path.

    FileNotFoundError when it is missing (with `hint`), ValueError when it is not JSON or its
    "format" is not `fmt`."""
    path = Path(path)
    if path.is_dir():
        path = path / default_name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found{hint}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError as err:
        raise ValueError(f"{path} is nested too deeply to be {default_name}{hint}") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        kind = file_kind(path)
        if kind == "a malformed JSON file":
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        raise ValueError(f"{path} is {kind}, expected {default_name}{hint}") from err
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{path}: format {found!r}, expected {fmt!r} ({default_name}{hint})")
    return path, doc
