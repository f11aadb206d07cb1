"""Checkpoints: one `.safetensors` file, the spec and training facts in its metadata.

Nothing is unpickled: safetensors holds raw tensors and a JSON header only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from .file_kind import file_kind
from .model import CCT
from .spec import CCTSpec

FORMAT = "lsmha-checkpoint-1"


def save(model: CCT, path: str | os.PathLike, **facts: Any) -> Path:
    """Write `model` to `path` (.safetensors) with its spec and `facts`
    (JSON-serialisable: dataset, epochs, accuracy, ...). Written to a temporary
    file and renamed, so a crash never leaves a half-written checkpoint."""
    if not isinstance(model, CCT):
        raise TypeError(f"save expects an lsmha CCT model, got {type(model).__name__}")
    path = Path(path)
    try:
        facts_json = json.dumps(facts, sort_keys=True)
    except TypeError as err:
        raise ValueError(f"checkpoint facts must be JSON-serialisable: {err}") from err
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "spec": model.spec.to_json(), "facts": facts_json}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(_sorted_metadata(safetensors_bytes(tensors, metadata=metadata)))
        os.chmod(tmp, _new_file_mode())  # safetensors writes 0600; a server run as another user must read it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a signal: no half-written temporary left behind
        raise
    return path


def _sorted_metadata(data: bytes) -> bytes:
    """`data` (a safetensors file) with its metadata keys in sorted order. safetensors writes
    them from a hash map, in an order that changes from run to run: the same model would
    give files of different sha256."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads its header to 8 bytes (aligned tensor data)
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


def _new_file_mode() -> int:
    """The mode `open()` gives a new file under this process's umask (0644 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _open(path: Path) -> tuple[dict[str, str], Any]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (expected a .safetensors file written by lsmha.save)")
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        kind = file_kind(path)
        if not kind.startswith("a safetensors file") and path.is_file():
            raise ValueError(f"{path} is {kind}, expected a .safetensors checkpoint written by lsmha.save") from err
        raise ValueError(f"{path} is not a readable safetensors checkpoint (truncated or corrupt?): {err}") from err
    metadata = handle.metadata() or {}
    if metadata.get("format") != FORMAT or "spec" not in metadata:
        raise ValueError(
            f"{path} is a safetensors file but not an lsmha checkpoint "
            f"(metadata format={metadata.get('format')!r}); write it with lsmha.save"
        )
    return metadata, handle


def load_facts(path: str | os.PathLike) -> dict[str, Any]:
    """The spec (under "spec") and training facts of a checkpoint, without loading weights."""
    metadata, _ = _open(Path(path))
    facts = json.loads(metadata.get("facts", "{}"))
    return {"spec": json.loads(metadata["spec"]), **facts}


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> CCT:
    """Rebuild the model saved at `path`, in eval mode, on `device`. Its facts are
    on `model.facts`. Fails with a clear message on a missing, truncated or
    mismatched file."""
    path = Path(path)
    metadata, handle = _open(path)
    spec = CCTSpec.from_json(metadata["spec"])
    _check_shapes(path, spec, handle)
    model = CCT(spec)
    state = {}
    for key in model.state_dict():
        try:
            state[key] = handle.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{path}: tensor {key!r} is unreadable (truncated file?): {err}") from err
    model.load_state_dict(state)
    model.facts = json.loads(metadata.get("facts", "{}"))
    return model.to(device).eval()


def _check_shapes(path: Path, spec: CCTSpec, handle: Any) -> None:
    """Refuse a spec that does not describe the tensors the header lists, before any weight
    is allocated: a spec is only metadata, and a forged one (img_size 4096, dim 32768) would
    otherwise allocate gigabytes before the first tensor is compared."""
    names = handle.keys()  # a safe_open handle is not iterable
    stored = {key: tuple(handle.get_slice(key).get_shape()) for key in names}
    blocks = {key.split(".")[1] for key in stored if key.startswith("blocks.")}
    if len(blocks) != spec.n_blocks:  # checked first: building even a meta model costs time per block
        raise ValueError(
            f"{path} does not match its spec: the file holds {len(blocks)} blocks, "
            f"the spec says n_blocks={spec.n_blocks}"
        )
    with torch.device("meta"):
        expected = {key: tuple(t.shape) for key, t in CCT(spec).state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path} does not match its spec: missing tensors {missing[:5]}, unexpected {unexpected[:5]}")
    for key, shape in expected.items():
        if stored[key] != shape:
            raise ValueError(f"{path}: tensor {key!r} has shape {stored[key]}, the spec needs {shape}")
