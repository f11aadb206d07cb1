"""What every backend shares: the `Source` it builds from, the `Backend` it returns, and
`FileBackend`, the base of the backends that run an export directory's files."""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...metrics import soft_committee
from ...models import CCTSpec

if TYPE_CHECKING:
    from ...artifacts import ExportManifest, FileEntry
    from ...models import CCT


class BackendUnavailable(RuntimeError):
    """A backend cannot run here or cannot run this source; the message says why and what to do."""


class Allowed(abc.ABC):
    """The values one backend option takes."""

    @abc.abstractmethod
    def accepts(self, value: Any) -> bool: ...

    @abc.abstractmethod
    def __str__(self) -> str: ...


@dataclass(frozen=True)
class OneOf(Allowed):
    """One of the listed values (compared with their type: True is not 1)."""

    values: tuple[Any, ...]

    def accepts(self, value: Any) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values)

    def __str__(self) -> str:
        return "one of " + ", ".join(map(repr, self.values))


@dataclass(frozen=True)
class IntRange(Allowed):
    """An int in [low, high] (high None: this machine's CPU count), or None when `optional`."""

    low: int = 1
    high: int | None = None
    optional: bool = True

    def limit(self) -> int:
        return self.high if self.high is not None else os.cpu_count() or 1

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        return type(value) is int and self.low <= value <= self.limit()

    def __str__(self) -> str:
        return f"an int in {self.low}..{self.limit()}" + (" or None" if self.optional else "")


@dataclass(frozen=True)
class Devices(Allowed):
    """None (the backend's default), or a device of the listed kinds: "cpu", "cuda" or "cuda:N"."""

    kinds: tuple[str, ...] = ("cpu", "cuda")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return True
        if not isinstance(value, str):
            return False
        kind, _, index = value.partition(":")
        return kind in self.kinds and (not index or (kind == "cuda" and index.isdigit()))

    def __str__(self) -> str:
        return "None or " + ", ".join(k if k == "cpu" else f"{k!r}, 'cuda:N'" for k in self.kinds)


@dataclass(frozen=True)
class AnyPath(Allowed):
    """None or a filesystem path (str or os.PathLike)."""

    def accepts(self, value: Any) -> bool:
        return value is None or isinstance(value, (str, os.PathLike))

    def __str__(self) -> str:
        return "None or a path"


def option(default: Any, allowed: Allowed) -> Any:
    """A backend option: a dataclass field with its default and the values it takes."""
    return field(default=default, metadata={"allowed": allowed})


@dataclass(frozen=True)
class BackendOptions:
    """Base of each backend's typed options (a frozen dataclass of `option` fields). Building one
    checks every value: a bad one is a ValueError naming the option, the value and what it takes."""

    def __post_init__(self) -> None:
        for f in fields(self):
            check_value(type(self), f.name, getattr(self, f.name))

    @classmethod
    def names(cls) -> set[str]:
        """The options this backend takes."""
        return {f.name for f in fields(cls)}

    @classmethod
    def allowed(cls, name: str) -> Allowed:
        """What option `name` takes."""
        return next(f.metadata["allowed"] for f in fields(cls) if f.name == name)


def check_value(options: type[BackendOptions], name: str, value: Any) -> None:
    """ValueError unless `options` takes `value` for option `name`."""
    allowed = options.allowed(name)
    if not allowed.accepts(value):
        raise ValueError(f"backend option {name}={value!r} is not allowed: it takes {allowed}")


@dataclass
class Source:
    """Everything a backend may build from: the member specs, and either torch
    models / checkpoints, or an export directory's verified manifest (or both).

    Args:
        specs: one `CCTSpec` per member, in committee order.
        models: in-memory torch models, when the committee was built from them.
        checkpoints: member `.safetensors` files (verified), when known.
        manifest: the export directory's manifest (hashes already verified).
    """

    specs: list[CCTSpec]
    models: list[CCT] | None = None
    checkpoints: list[Path] | None = None
    manifest: ExportManifest | None = None
    _loaded: list[CCT] | None = field(default=None, repr=False)

    def torch_models(self) -> list[CCT]:
        """The members as torch models: given, loaded from checkpoints, or from the
        export directory's safetensors entries. BackendUnavailable when none of these exist."""
        if self.models is not None:
            return self.models
        if self._loaded is None:
            from ...models import load

            if self.checkpoints is not None:
                self._loaded = [load(p) for p in self.checkpoints]
                return self._loaded
            by_scope = {e.scope: e for e in self.manifest.find(format="safetensors")} if self.manifest else {}
            if not all(i in by_scope for i in range(len(self.specs))):
                raise BackendUnavailable(
                    "no torch weights: the source has no models, checkpoints or safetensors files in its manifest"
                )
            entries = [by_scope[i] for i in range(len(self.specs))]
            loaded = [load(self.manifest.verified_path(e, check_content=False)) for e in entries]
            for entry, model in zip(entries, loaded, strict=True):  # the spec each file held, read once
                self.manifest.check_loaded_spec(entry, model.spec)
            self._loaded = loaded
        return self._loaded


class Backend(abc.ABC):
    """Runs the members on checked images: (N, C, H, W) uint8 or float32, C-contiguous numpy.

    Attributes:
        name: what actually runs, e.g. "torch[cpu]" or "onnxruntime[CPUExecutionProvider]".
        num_members: members in the committee.
        max_batch: largest batch one call accepts (None: any); the Committee chunks to it.
    """

    name: str
    num_members: int
    max_batch: int | None = None

    @abc.abstractmethod
    def member_logits(self, images: np.ndarray) -> np.ndarray:
        """Raw logits of each member: (M, N, classes) float32."""

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Sum of the members' raw logits: (N, classes) float32."""
        return soft_committee(self.member_logits(images))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions/devices (optional)."""


def pick_files(
    source: Source, fmt: str, precision: str, rebuild: str, what: str = "", where: Any = None
) -> tuple[list[FileEntry], bool]:
    """The export's committee file of `fmt` in `precision` (and matching `where(entry)`), else a
    complete set of member files; (entries, is_committee_file).

    Raises BackendUnavailable, naming `what` was missing (e.g. "TensorRT plan"), what the
    directory holds and the `rebuild` command."""
    manifest = source.manifest
    if manifest is None:
        raise BackendUnavailable(f"it needs an export directory with {what or fmt} files; run `{rebuild}`")
    entries = [e for e in manifest.find(format=fmt, precision=precision) if where is None or where(e)]
    picked = manifest.runnable_set(entries)
    if picked:
        return picked
    have = sorted({(e.precision, str(e.scope), e.extra.get("device", "")) for e in manifest.find(format=fmt)})
    raise BackendUnavailable(
        f"{manifest.directory} has no {precision}-precision {what or fmt} for the committee or every member "
        f"(have (precision, scope, device): {have or 'none'}); run `{rebuild}`"
    )


class FileBackend(Backend):
    """A backend over exported files: ONE committee file (outputs `logits`, `member_logits`) or one
    file per member (output `logits`), each wrapped in a runner that `call` invokes.

    Subclasses say how a batch goes in (`prepare`), how a runner is called (`call`: its outputs in
    file order), and, for device tensors, how outputs are stacked and brought back (`stack`,
    `to_numpy`)."""

    def __init__(self, runners: Sequence[Any], committee_file: bool, num_members: int, name: str) -> None:
        self.runners = list(runners)
        self.committee_file = committee_file
        self.num_members = num_members
        self.name = name

    def prepare(self, images: np.ndarray) -> Any:
        return images

    @abc.abstractmethod
    def call(self, runner: Any, x: Any) -> Sequence[Any]:
        """The runner's outputs for input `x`, in the file's output order."""

    def stack(self, outputs: list[Any]) -> Any:
        return np.stack(outputs)

    def to_numpy(self, out: Any) -> np.ndarray:
        return np.asarray(out, dtype=np.float32)

    def _run(self, images: np.ndarray, want_members: bool) -> np.ndarray:
        x = self.prepare(images)
        if self.committee_file:
            return self.to_numpy(self.call(self.runners[0], x)[1 if want_members else 0])
        members = self.stack([self.call(r, x)[0] for r in self.runners])
        return self.to_numpy(members if want_members else soft_committee(members))

    def member_logits(self, images: np.ndarray) -> np.ndarray:
        return self._run(images, want_members=True)

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self._run(images, want_members=False)

    def outputs(self, images: np.ndarray) -> list[np.ndarray]:
        """Every output of the one committee file for `images`, in the file's order (the
        adaptive graph's logits and members run)."""
        if not self.committee_file:
            raise BackendUnavailable(f"{self.name} runs one file per member, not one graph with outputs of its own")
        return [np.asarray(self.to_numpy(o)) for o in self.call(self.runners[0], self.prepare(images))]

    def close(self) -> None:
        self.runners = []
