"""An export manifest's member specs checked against what its files hold.

The specs in `manifest.json` are only text beside the files its hashes cover: a spec edited
to say 1000 classes, a 30000-pixel image or one member too many would be served as true (or
allocate gigabytes at warm-up) while the graph answers otherwise. So at load each spec must
equal the one stored in that member's (hashed) weights, every entry's declared tensors must
be the shapes the specs imply, and an ONNX graph's own inputs and outputs must be those.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..models import CCTSpec

if TYPE_CHECKING:
    from .manifest import ExportManifest, FileEntry


def specs_sha256(members: Sequence[dict[str, Any]]) -> str:
    """Hex sha256 of the members' spec dicts in canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(list(members), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def check_specs(manifest: ExportManifest, source: Path) -> None:
    """Raise ValueError naming `source` and the first disagreement between the manifest's
    specs and its files (see the module docstring): every file read, the weights first."""
    weights = _check_weight_scopes(manifest, source)
    for entry in weights:
        check_file(manifest, entry, source)
    for entry in manifest.files:
        _check_declared_tensors(manifest, entry, source)
        if entry.format == "onnx":
            check_file(manifest, entry, source)


def check_listing(manifest: ExportManifest, source: Path) -> None:
    """The checks the manifest's own text allows (no file is read): one weights file per member,
    and every entry's declared tensors the shapes the specs imply. `check_file` does the rest,
    file by file."""
    _check_weight_scopes(manifest, source)
    for entry in manifest.files:
        _check_declared_tensors(manifest, entry, source)


def _check_weight_scopes(manifest: ExportManifest, source: Path) -> list[FileEntry]:
    """The weights entries in member order, refusing a set that is not one per member."""
    weights = {e.scope: e for e in manifest.find(format="safetensors") if isinstance(e.scope, int)}
    if weights and sorted(weights) != list(range(len(manifest.specs))):
        raise ValueError(
            f"{source} lists {len(manifest.specs)} member specs but holds weights for members {sorted(weights)}; "
            "refusing it (re-export the committee)"
        )
    return [weights[i] for i in sorted(weights)]


def check_file(manifest: ExportManifest, entry: FileEntry, source: Path) -> None:
    """The checks of one file's content: a member's weights hold its spec, an ONNX graph has the
    declared inputs and outputs."""
    if entry.format == "safetensors" and isinstance(entry.scope, int):
        _check_member_weights(manifest, entry, source)
    elif entry.format == "onnx":
        _check_onnx_graph(manifest.path_of(entry), entry, source)


def _check_member_weights(manifest: ExportManifest, entry: FileEntry, source: Path) -> None:
    from ..models.checkpoint import load_facts

    check_member_spec(manifest, entry, CCTSpec.from_dict(load_facts(manifest.path_of(entry))["spec"]), source)


def check_member_spec(manifest: ExportManifest, entry: FileEntry, stored: CCTSpec, source: Path) -> None:
    """ValueError unless `stored`, the spec in member weights `entry`, is the manifest's spec of
    that member (a loader that has read the file passes the spec it found)."""
    i, spec = entry.scope, manifest.specs[entry.scope]
    if stored != spec:
        theirs = stored.to_dict()
        diff = {k: (v, theirs[k]) for k, v in spec.to_dict().items() if theirs[k] != v and k != "name"}
        raise ValueError(
            f"{source}: member {i}'s spec disagrees with its weights {entry.path} "
            f"(manifest, stored): {diff}; refusing it (re-export the committee)"
        )


def _expected_tensors(manifest: ExportManifest, scope: str | int) -> dict[str, tuple[int | str, ...]]:
    s = manifest.specs[0]
    expected: dict[str, tuple[int | str, ...]] = {
        "images": ("batch", s.in_chans, s.img_size, s.img_size),
        "logits": ("batch", s.num_classes),
    }
    if not isinstance(scope, int):
        expected["member_logits"] = (len(manifest.specs), "batch", s.num_classes)
    return expected


def _check_declared_tensors(manifest: ExportManifest, entry: FileEntry, source: Path) -> None:
    if isinstance(entry.scope, int) and entry.scope >= len(manifest.specs):
        raise ValueError(f"{source}: {entry.path} is for member {entry.scope}, the manifest has {len(manifest.specs)}")
    expected = _expected_tensors(manifest, entry.scope)
    for t in (*entry.inputs, *entry.outputs):
        want = expected.get(t.name)
        if want is not None and _static(t.shape) != _static(want):
            raise ValueError(
                f"{source}: {entry.path} declares {t.name} of shape {list(t.shape)}, "
                f"the member specs imply {list(want)}; refusing it"
            )


def _check_onnx_graph(path: Path, entry: FileEntry, source: Path) -> None:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    check_graph_io(entry, {v.name: _onnx_shape(v) for v in (*graph.input, *graph.output)}, source)


def check_graph_io(entry: FileEntry, actual: dict[str, Sequence[int | str | None]], source: Path) -> None:
    """ValueError unless a graph's inputs and outputs (`actual`: name -> shape, a dynamic axis as a
    name or None) are the ones `entry` declares (a runtime that has read the graph passes its own view)."""
    for t in (*entry.inputs, *entry.outputs):
        if t.name not in actual:
            raise ValueError(f"{source}: {entry.path} has no tensor {t.name!r} (it has {sorted(actual)}); refusing it")
        if _static(actual[t.name]) != _static(t.shape):
            raise ValueError(
                f"{source}: {entry.path}'s {t.name} has shape {list(actual[t.name])}, "
                f"the manifest declares {list(t.shape)}; refusing it"
            )


def _onnx_shape(value: Any) -> tuple[int | str, ...]:
    dims = value.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)


def _static(shape: Sequence[int | str]) -> tuple[int | None, ...]:
    """A shape with every named (dynamic) axis as None."""
    return tuple(d if isinstance(d, int) else None for d in shape)
