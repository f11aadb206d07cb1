"""Artifacts: the files lsmha writes and reads back — `committee.json`, an export's
`manifest.json` — with sha256 hashes, atomic JSON and path confinement."""

from .committee import read_committee, write_committee
from .files import read_json_document, resolve_inside, sha256_file, write_bytes_atomic, write_json_atomic
from .manifest import (
    ADAPTIVE_GRAPH,
    ADAPTIVE_GRAPH_FORMAT,
    COMMITTEE,
    MANIFEST,
    ExportManifest,
    FileEntry,
    TensorInfo,
    add_entries,
    file_entry,
    read_manifest,
    write_manifest,
)

__all__ = [
    "ADAPTIVE_GRAPH",
    "ADAPTIVE_GRAPH_FORMAT",
    "COMMITTEE",
    "MANIFEST",
    "ExportManifest",
    "FileEntry",
    "TensorInfo",
    "add_entries",
    "file_entry",
    "read_committee",
    "read_json_document",
    "read_manifest",
    "resolve_inside",
    "sha256_file",
    "write_bytes_atomic",
    "write_committee",
    "write_json_atomic",
    "write_manifest",
]
