"""An export directory's start: an empty directory (or one cleared on request), the members'
weights as `member<i>.safetensors`, and a fresh `manifest.json` listing them.

Every exporter then adds its files with `lsmha.artifacts.add_entries`. A directory that
already holds files is refused: a new manifest would forget the files an earlier export
wrote (a fp16 graph, a `.pt2` that took minutes to compile) while they stay on disk.
`force=True` clears it first, deleting only what an export writes. An exporter that writes
more files starts with `complete=False`: the manifest says `"complete": false` until it has
listed its files, so an export killed half-way is refused at load, never taken for a committee.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..artifacts import MANIFEST, ExportManifest, FileEntry, file_entry, write_manifest
from ..models import CCT

# what an export writes: its files (and the temporary files of an interrupted one)
EXPORT_SUFFIXES = (".onnx", ".safetensors", ".pt2", ".plan", ".tmp", ".cache")
EXPORT_NAMES = (MANIFEST, "adaptive.json")  # adaptive.json: `lsmha-export calibrate`'s thresholds


def _written_by_export(path: Path) -> bool:
    return path.is_file() and (path.name in EXPORT_NAMES or path.suffix in EXPORT_SUFFIXES)


def prepare_directory(directory: str | os.PathLike, force: bool = False) -> Path:
    """`directory`, resolved and created, empty.

    Raises:
        FileExistsError: it holds files and `force` is False (the message lists some and says
            what to do), or `force` is True and it holds something an export does not write
            (nothing is deleted then).
    """
    directory = Path(directory).resolve()
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} is a file; the export needs a directory")
    directory.mkdir(parents=True, exist_ok=True)
    present = sorted(directory.iterdir())
    if not present:
        return directory
    names = ", ".join(p.name for p in present[:6]) + (", ..." if len(present) > 6 else "")
    if not force:
        raise FileExistsError(
            f"{directory} is not empty ({len(present)} entries: {names}); a new export would replace its "
            f"{MANIFEST} and leave an earlier export's files on disk, unlisted. Export into a new directory, "
            "or clear this one first with --force (force=True in Python)"
        )
    foreign = [p.name for p in present if not _written_by_export(p)]
    if foreign:
        raise FileExistsError(
            f"{directory} holds entries an export does not write ({', '.join(foreign[:6])}); --force deletes "
            f"only export files ({', '.join(EXPORT_NAMES)}, *{', *'.join(EXPORT_SUFFIXES)}); choose another directory"
        )
    for p in present:
        p.unlink()
    return directory


def write_weights(
    models: Sequence[CCT], directory: str | os.PathLike, force: bool = False, complete: bool = True
) -> ExportManifest:
    """Start an export directory: prepare it (see `prepare_directory`), write each member's
    weights as `member<i>.safetensors` (so the torch backend and parity checks can load the
    directory alone) and a manifest listing them.

    Args:
        models: the members, in committee order (a committee of one is a single model).
        directory: created if missing; must be empty unless `force`.
        force: clear an earlier export's files first.
        complete: False when an exporter writes more files next: the manifest then says the
            export did not finish until the exporter lists them (`add_entries`), so a
            directory whose export was killed half-way is refused at load.

    Returns:
        The manifest written.
    """
    import torch

    from ..models import save

    models = list(models)
    if not models:
        raise ValueError("nothing to export: the committee has no members")
    directory = prepare_directory(directory, force)
    versions = {"torch": torch.__version__.split("+")[0]}
    entries: list[FileEntry] = []
    for i, m in enumerate(models):
        path = save(m, directory / f"member{i}.safetensors", **getattr(m, "facts", {}))
        entries.append(file_entry(directory, path, format="safetensors", precision="fp32", scope=i, versions=versions))
    manifest = ExportManifest(directory, [m.spec for m in models], entries, complete=complete)
    write_manifest(manifest)
    return manifest


def remove_temporaries(directory: str | os.PathLike) -> None:
    """Delete the `*.tmp` files a failed export left in `directory` (a full disk, a signal)."""
    for p in Path(directory).glob("*.tmp"):
        p.unlink(missing_ok=True)
