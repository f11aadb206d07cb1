"""`manifest.json`: what an export directory holds, with a sha256 for every file.

One generic list of files, each a `FileEntry` (path, sha256, format, precision,
scope, input/output names and shapes, opset, the versions that made it, and a
free `extra` dict). A format is only a string, so new artifact kinds ("plan",
"pt2", ...) are added by writing entries, never by changing this module:

    entry = file_entry(out_dir, "committee.plan", format="plan", precision="fp16",
                       scope="committee", inputs=[...], outputs=[...],
                       versions={"tensorrt": trt.__version__})
    add_entries(out_dir, [entry])          # merges into an existing manifest

`read_manifest` refuses any path that leaves the directory and checks the listing against the
member specs; it verifies every hash and checks the member specs against the files
(`consistency.check_specs`) at once, or, with `hash_files=False` (how the engine loads), file by
file as a backend opens them (`ExportManifest.verified_path`): a file no backend opens is never
read. Either way a file is hashed once per process (`verified.file_sha256`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models import CCTSpec
from ..models.spec import SpecFacts
from .consistency import check_file, check_graph_io, check_listing, check_member_spec, check_specs, specs_sha256
from .files import read_json_document, resolve_inside, sha256_file, write_json_atomic
from .verified import check_sha256, read_checked

FORMAT = "lsmha-export-1"
MANIFEST = "manifest.json"
COMMITTEE = "committee"  # the scope of a file holding the whole committee
ADAPTIVE_GRAPH = "adaptive.onnx"  # the calibrated adaptive committee as one graph (lsmha.export.adaptive_graph)
ADAPTIVE_GRAPH_FORMAT = "adaptive-onnx"  # its format: never taken for the committee graph


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output: name, dtype (numpy name) and shape ("batch" for the dynamic axis)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorInfo:
        if not (
            isinstance(d, dict)
            and isinstance(d.get("name"), str)
            and isinstance(d.get("dtype"), str)
            and isinstance(d.get("shape"), list)
            and all(
                isinstance(x, str) or (isinstance(x, int) and not isinstance(x, bool) and x >= 0) for x in d["shape"]
            )
        ):
            raise ValueError(
                f'a tensor must be {{"name": str, "dtype": str, "shape": [int or str, ...]}}, got {d!r:.200}'
            )
        return cls(d["name"], d["dtype"], tuple(d["shape"]))


@dataclass(frozen=True)
class FileEntry:
    """One exported file.

    Args:
        path: relative to the export directory (posix separators).
        sha256: hex digest of the file.
        format: "onnx", "safetensors", and later "plan", "pt2", ...
        precision: "fp32", "fp16", "bf16", "int8", ...
        scope: "committee" for a whole-committee file, else the member index.
        inputs / outputs: the file's tensors.
        opset: ONNX opset (None for non-ONNX files).
        versions: package versions that made the file (torch, onnx, onnxruntime, tensorrt, ...).
        extra: anything format-specific (e.g. a TensorRT profile's batch range).
    """

    path: str
    sha256: str
    format: str
    precision: str
    scope: str | int
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()
    opset: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["inputs"] = [t.to_dict() for t in self.inputs]
        d["outputs"] = [t.to_dict() for t in self.outputs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileEntry:
        if not isinstance(d, dict):
            raise ValueError(f"a manifest file entry must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        for key, kinds in _ENTRY_TYPES.items():
            if key in d and (not isinstance(d[key], kinds) or isinstance(d[key], bool)):
                raise ValueError(f"manifest file field {key!r} must be {kinds}, got {d[key]!r:.200}")
        for key in ("inputs", "outputs"):
            if not isinstance(d.get(key, []), list):
                raise ValueError(f"manifest file field {key!r} must be a list of tensors, got {d[key]!r:.200}")
        d["inputs"] = tuple(TensorInfo.from_dict(t) for t in d.get("inputs", ()))
        d["outputs"] = tuple(TensorInfo.from_dict(t) for t in d.get("outputs", ()))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown manifest file field(s) {unknown}; known: {sorted(known)}")
        missing = sorted({"path", "sha256", "format", "precision", "scope"} - set(d))
        if missing:
            raise ValueError(f"manifest file entry lacks {missing}: {d!r:.200}")
        if not (d["scope"] == COMMITTEE or (isinstance(d["scope"], int) and d["scope"] >= 0)):
            raise ValueError(f"manifest file scope must be {COMMITTEE!r} or a member index >= 0, got {d['scope']!r}")
        return cls(**d)


_ENTRY_TYPES: dict[str, type | tuple[type, ...]] = {
    "path": str,
    "sha256": str,
    "format": str,
    "precision": str,
    "scope": (str, int),
    "opset": (int, type(None)),
    "versions": dict,
    "extra": dict,
}


@dataclass
class ExportManifest(SpecFacts):
    """The manifest of one export directory: the committee's member specs and its files."""

    directory: Path
    specs: list[CCTSpec]
    files: list[FileEntry] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    complete: bool = True  # False from the export's first file until its last is listed
    _checked: set[str] = field(default_factory=set, repr=False, compare=False)  # entry paths verified

    def find(
        self, format: str | None = None, precision: str | None = None, scope: str | int | None = None
    ) -> list[FileEntry]:
        """Entries matching every criterion given (None matches anything)."""
        return [
            e
            for e in self.files
            if (format is None or e.format == format)
            and (precision is None or e.precision == precision)
            and (scope is None or e.scope == scope)
        ]

    def runnable_set(self, entries: list[FileEntry]) -> tuple[list[FileEntry], bool] | None:
        """Of `entries` (one format and precision): the committee file if there is one, else a
        complete set of member files in member order; (files, is_committee), or None if neither."""
        committee = [e for e in entries if e.scope == COMMITTEE]
        if committee:
            return committee[:1], True
        per_member = {e.scope: e for e in entries}
        if all(i in per_member for i in range(len(self.specs))):
            return [per_member[i] for i in range(len(self.specs))], False
        return None

    def path_of(self, entry: FileEntry) -> Path:
        """Absolute path of an entry, refusing paths that leave the directory."""
        return resolve_inside(self.directory, entry.path)

    def verified_path(self, entry: FileEntry, check_content: bool = True) -> Path:
        """Absolute path of an entry once the file matches its sha256 and its content the member
        specs (`consistency.check_file`): the path a backend opens. Checked once per manifest,
        hashed once per process; ValueError / FileNotFoundError naming the file otherwise.
        `check_content=False`: the caller checks the content from its own read of the file
        (`check_loaded_spec` for weights, `check_loaded_io` for a graph)."""
        path = self.path_of(entry)
        if entry.path not in self._checked:
            source = self.directory / MANIFEST
            check_sha256(path, entry.sha256, f"{source}: {entry.path}")
            if check_content:
                check_file(self, entry, source)
                self._checked.add(entry.path)
        return path

    def verified_bytes(self, entry: FileEntry) -> bytes:
        """The content of an entry's file once it matches its sha256, for a runtime that parses
        bytes: one read for the hash and the parse. The caller checks what it parsed
        (`check_loaded_io`)."""
        return read_checked(self.path_of(entry), entry.sha256, f"{self.directory / MANIFEST}: {entry.path}")

    def check_loaded_spec(self, entry: FileEntry, spec: CCTSpec) -> None:
        """ValueError unless `spec`, read from member weights `entry` by their loader, is the
        manifest's spec of that member: `verified_path(entry, check_content=False)`'s other half."""
        check_member_spec(self, entry, spec, self.directory / MANIFEST)
        self._checked.add(entry.path)

    def check_loaded_io(self, entry: FileEntry, actual: dict[str, Any]) -> None:
        """ValueError unless a graph's inputs and outputs as its runtime read them (`actual`: name ->
        shape) are the ones `entry` declares: `verified_path(entry, check_content=False)`'s other half."""
        check_graph_io(entry, actual, self.directory / MANIFEST)
        self._checked.add(entry.path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "members": [s.to_dict() for s in self.specs],
            "members_sha256": specs_sha256([s.to_dict() for s in self.specs]),
            "num_classes": self.num_classes,
            "img_size": self.img_size,
            "in_chans": self.in_chans,
            "files": [e.to_dict() for e in self.files],
            "complete": self.complete,
            **self.extra,
        }


def file_entry(
    directory: str | os.PathLike,
    path: str | os.PathLike,
    *,
    format: str,
    precision: str,
    scope: str | int,
    inputs: list[TensorInfo] | tuple[TensorInfo, ...] = (),
    outputs: list[TensorInfo] | tuple[TensorInfo, ...] = (),
    opset: int | None = None,
    versions: dict[str, str] | None = None,
    **extra: Any,
) -> FileEntry:
    """A `FileEntry` for a file already written under `directory` (hash computed here)."""
    directory = Path(directory).resolve()
    absolute = (directory / path).resolve()  # an absolute `path` stays itself
    if not absolute.is_relative_to(directory):
        raise ValueError(f"{path} is not inside the export directory {directory}")
    if not absolute.is_file():
        raise FileNotFoundError(f"cannot describe {absolute}: no such file")
    if not (scope == COMMITTEE or (isinstance(scope, int) and scope >= 0)):
        raise ValueError(f"scope must be {COMMITTEE!r} or a member index >= 0, got {scope!r}")
    return FileEntry(
        path=absolute.relative_to(directory).as_posix(),
        sha256=sha256_file(absolute),
        format=format,
        precision=precision,
        scope=scope,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        opset=opset,
        versions=dict(versions or {}),
        extra=dict(extra),
    )


def write_manifest(manifest: ExportManifest) -> Path:
    """Write `manifest.json` into the manifest's directory (atomically)."""
    return write_json_atomic(Path(manifest.directory) / MANIFEST, manifest.to_dict())


def add_entries(directory: str | os.PathLike, entries: list[FileEntry]) -> ExportManifest:
    """Merge `entries` into the directory's existing manifest (an entry with the same
    path replaces the old one) and write it back. For exporters of new formats."""
    manifest = read_manifest(directory, verify=False)
    new_paths = {e.path for e in entries}
    manifest.files = [e for e in manifest.files if e.path not in new_paths] + list(entries)
    manifest.complete = True  # every exporter lists its files last, once they are all written
    write_manifest(manifest)
    return manifest


def read_manifest(path: str | os.PathLike, verify: bool = True, hash_files: bool = True) -> ExportManifest:
    """Read `manifest.json` (or the directory holding it). With `verify`, every file must exist
    inside the directory and the listing agree with the member specs, and, with `hash_files`,
    every file match its sha256 and the specs (else ValueError/FileNotFoundError); without
    `hash_files` each file is hashed and checked when it is opened (`ExportManifest.verified_path`)."""
    path, doc = read_json_document(path, MANIFEST, FORMAT, " (the export manifest: write one with `lsmha-export onnx`)")
    directory = path.parent.resolve()
    members, files_doc = doc.get("members"), doc.get("files", [])
    if not isinstance(members, list) or not members:
        raise ValueError(f"{path}: 'members' must be a non-empty list of member specs, got {members!r:.200}")
    if not isinstance(files_doc, list):
        raise ValueError(f"{path}: 'files' must be a list of file entries, got {type(files_doc).__name__}")
    stated = doc.get("members_sha256")
    if stated is not None and stated != specs_sha256(members):
        raise ValueError(f"{path}: the member specs do not match their members_sha256 (edited?); refusing them")
    try:
        specs = [CCTSpec.from_dict(s) for s in members]
        files = [FileEntry.from_dict(f) for f in files_doc]
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from err
    reserved = {"format", "members", "members_sha256", "num_classes", "img_size", "in_chans", "files", "complete"}
    complete = doc.get("complete", True)  # manifests written before the mark existed were written last
    if not isinstance(complete, bool):
        raise ValueError(f"{path}: 'complete' must be true or false, got {complete!r:.100}")
    if verify and not complete:
        raise ValueError(
            f"{path}: the export into {directory} did not finish (interrupted or failed); refusing it: "
            "export again with --force (force=True in Python)"
        )
    extra = {k: v for k, v in doc.items() if k not in reserved}
    manifest = ExportManifest(directory, specs, files, extra, complete)
    for entry in files:
        absolute = manifest.path_of(entry)  # refuses escaping paths even without verify
        if verify and not absolute.is_file():
            raise FileNotFoundError(f"{path}: listed file {entry.path} is missing")
    if verify and hash_files:
        for entry in files:
            check_sha256(manifest.path_of(entry), entry.sha256, f"{path}: {entry.path}")
        check_specs(manifest, path)
        manifest._checked.update(e.path for e in files)
    elif verify:
        check_listing(manifest, path)
    return manifest
