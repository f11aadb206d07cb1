"""`committee.json`: a committee of checkpoints, each named by a path relative to
the manifest and its sha256. Reading verifies every hash and refuses any path
that leaves the manifest's directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..models import CCTSpec
from ..models.spec import check_compatible
from .files import read_json_document, resolve_inside, sha256_file, write_json_atomic
from .verified import check_sha256

FORMAT = "lsmha-committee-1"


def write_committee(path: str | os.PathLike, checkpoints: list[str | os.PathLike], **extra: Any) -> Path:
    """Write `committee.json` at `path` for `checkpoints` (which must lie under its
    directory). Members must agree on classes, image size and channels."""
    from ..models import load_facts  # reads safetensors (torch): loaded only when a committee is written

    path = Path(path)
    root = path.parent.resolve()
    if not checkpoints:
        raise ValueError("a committee needs at least one checkpoint")
    paths = [Path(ck).resolve() for ck in checkpoints]
    for ck in paths:
        if not ck.is_relative_to(root):
            raise ValueError(f"checkpoint {ck} is not under the manifest's directory {root}")
    specs = [CCTSpec.from_dict(load_facts(ck)["spec"]) for ck in paths]
    check_compatible(specs, [str(ck) for ck in paths])
    members = [{"checkpoint": ck.relative_to(root).as_posix(), "sha256": sha256_file(ck)} for ck in paths]
    shape = (specs[0].num_classes, specs[0].img_size, specs[0].in_chans)
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
    """The manifest document and its members' verified checkpoint paths (each hashed once per
    process: `verified.file_sha256`)."""
    path, doc = read_json_document(path, "committee.json", FORMAT, " (the committee manifest)")
    members = doc.get("members")
    if not isinstance(members, list) or not members:
        raise ValueError(
            f"{path}: expected a non-empty 'members' list of {{'checkpoint', 'sha256'}} entries, "
            f"found {'no members field' if members is None else repr(members)[:80]}; write it with write_committee"
        )
    if not all(isinstance(m, dict) and {"checkpoint", "sha256"} <= m.keys() for m in members):
        raise ValueError(f"{path}: every member needs 'checkpoint' and 'sha256' fields, found {repr(members)[:200]}")
    paths = []
    for member in members:
        ck = resolve_inside(path.parent, member["checkpoint"])
        if not ck.is_file():
            raise FileNotFoundError(f"{path}: member checkpoint {member['checkpoint']} is missing")
        paths.append(check_sha256(ck, member["sha256"], f"{path}: {member['checkpoint']}"))
    return doc, paths
