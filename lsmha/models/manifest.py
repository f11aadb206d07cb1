"""`committee.json`: a committee of checkpoints, each named by a path relative to
the manifest and its sha256. Reading verifies every hash and refuses any path
that leaves the manifest's directory."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .checkpoint import load_facts

FORMAT = "lsmha-committee-1"


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


def write_json_atomic(path: Path, doc: dict[str, Any]) -> Path:
    """Write `doc` as indented JSON at `path` via a temporary file and a rename: never half-written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path


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
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if doc.get("format") != fmt:
        raise ValueError(f"{path}: format {doc.get('format')!r}, expected {fmt!r}")
    return path, doc


def write_committee(path: str | os.PathLike, checkpoints: list[str | os.PathLike], **extra: Any) -> Path:
    """Write `committee.json` at `path` for `checkpoints` (which must lie under its
    directory). Members must agree on classes, image size and channels."""
    path = Path(path)
    root = path.parent.resolve()
    if not checkpoints:
        raise ValueError("a committee needs at least one checkpoint")
    members, shape = [], None
    for ck in checkpoints:
        ck = Path(ck).resolve()
        if not ck.is_relative_to(root):
            raise ValueError(f"checkpoint {ck} is not under the manifest's directory {root}")
        spec = load_facts(ck)["spec"]
        this = (spec["num_classes"], spec["img_size"], spec["in_chans"])
        if shape is not None and this != shape:
            raise ValueError(f"{ck} has (classes, img_size, in_chans)={this}, the first member has {shape}")
        shape = this
        members.append({"checkpoint": ck.relative_to(root).as_posix(), "sha256": sha256_file(ck)})
    doc = {
        "format": FORMAT,
        "members": members,
        "num_classes": shape[0],
        "img_size": shape[1],
        "in_chans": shape[2],
        **extra,
    }
    return write_json_atomic(path, doc)


def read_committee(path: str | os.PathLike) -> tuple[dict[str, Any], list[Path]]:
    """The manifest document and its members' verified checkpoint paths."""
    path, doc = read_json_document(path, "committee.json", FORMAT, " (the committee manifest)")
    paths = []
    for member in doc["members"]:
        ck = resolve_inside(path.parent, member["checkpoint"])
        if not ck.is_file():
            raise FileNotFoundError(f"{path}: member checkpoint {member['checkpoint']} is missing")
        if sha256_file(ck) != member["sha256"]:
            raise ValueError(
                f"{path}: {member['checkpoint']} does not match its sha256 (modified or corrupt); refusing it"
            )
        paths.append(ck)
    return doc, paths
