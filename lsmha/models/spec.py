"""`CCTSpec`: the complete, JSON-serialisable description of one CCT variant.

CCT-L/3xC in the paper's notation: C convolutional layers (kernel 3) as the
tokenizer, L transformer blocks. Validation happens at construction so a bad
spec fails before any weights are allocated, with a message that says what to fix.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CCTSpec:
    """One compact convolutional transformer.

    Args:
        n_conv: convolutional layers in the tokenizer (3x3, stride 1, pad 1).
        n_blocks: transformer encoder blocks.
        dim: embedding (MHA) dimension; the last conv's width.
        heads: heads per block, one int for all blocks or one per block.
        mlp_ratio: hidden width of the feed-forward sub-block / dim.
        num_classes: output labels.
        img_size: square input side in pixels.
        in_chans: input channels.
        conv_width: width of the tokenizer's intermediate convs.
        pool: "first" max-pools after the first conv only (the paper's CCT-2/3x5,
            256 tokens for 32x32 inputs); "all" after every conv (original CCT).
        dropout: dropout after the positional embedding and in the MLP.
        attn_dropout: dropout on attention weights (training only).
        drop_path: stochastic-depth rate, linearly increasing to this value.
    """

    n_conv: int = 1
    n_blocks: int = 7
    dim: int = 256
    heads: int | tuple[int, ...] = 4
    mlp_ratio: float = 2.0
    num_classes: int = 100
    img_size: int = 32
    in_chans: int = 3
    conv_width: int = 64
    pool: str = "first"
    dropout: float = 0.0
    attn_dropout: float = 0.1
    drop_path: float = 0.1
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.heads, list):
            object.__setattr__(self, "heads", tuple(self.heads))
        for key in ("n_conv", "n_blocks", "dim", "num_classes", "img_size", "in_chans", "conv_width"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CCTSpec.{key} must be a positive int, got {value!r}")
        if self.pool not in ("first", "all"):
            raise ValueError(f"CCTSpec.pool must be 'first' or 'all', got {self.pool!r}")
        if isinstance(self.heads, tuple) and len(self.heads) != self.n_blocks:
            raise ValueError(
                f"CCTSpec.heads has {len(self.heads)} entries but n_blocks={self.n_blocks}: "
                "give one int for all blocks or exactly one per block"
            )
        for i, h in enumerate(self.block_heads):
            if not isinstance(h, int) or isinstance(h, bool) or h < 1:
                raise ValueError(f"CCTSpec.heads[{i}] must be a positive int, got {h!r}")
            if self.dim % h:
                raise ValueError(
                    f"dim={self.dim} is not divisible by block {i + 1}'s heads={h}: "
                    f"choose heads among the divisors of {self.dim} or change dim"
                )
        for key in ("mlp_ratio", "dropout", "attn_dropout", "drop_path"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"CCTSpec.{key} must be a finite number, got {value!r}")
        if self.mlp_ratio <= 0 or int(self.dim * self.mlp_ratio) < 1:
            raise ValueError(f"CCTSpec.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not isinstance(self.name, str):
            raise ValueError(f"CCTSpec.name must be a string, got {self.name!r}")
        for key in ("dropout", "attn_dropout", "drop_path"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"CCTSpec.{key} must be in [0, 1), got {value}")
        if self.img_size < 2**self.n_pools:
            raise ValueError(
                f"img_size={self.img_size} is too small for {self.n_pools} max-pool(s) (pool={self.pool!r}): "
                f"each pool halves the grid, so images need at least {2**self.n_pools} pixels a side; "
                "use pool='first' or larger images"
            )

    @property
    def block_heads(self) -> tuple[int, ...]:
        """Heads of each block, one entry per block."""
        if isinstance(self.heads, int):
            return (self.heads,) * self.n_blocks
        return tuple(self.heads)

    @property
    def n_pools(self) -> int:
        return 1 if self.pool == "first" else self.n_conv

    @property
    def grid_size(self) -> int:
        """Side of the token grid: MaxPool2d(3, 2, 1) maps s to ceil(s / 2)."""
        size = self.img_size
        for _ in range(self.n_pools):
            size = (size - 1) // 2 + 1
        return size

    @property
    def seq_len(self) -> int:
        """Tokens per image (256 for 32x32 inputs with one pool)."""
        return self.grid_size**2

    @property
    def mlp_dim(self) -> int:
        return int(self.dim * self.mlp_ratio)

    def replace(self, **changes: Any) -> CCTSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["heads"] = self.heads if isinstance(self.heads, int) else list(self.heads)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CCTSpec:
        if not isinstance(data, dict):
            raise ValueError(f"a CCTSpec must be a JSON object of its fields, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown CCTSpec field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> CCTSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"CCTSpec JSON is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"CCTSpec JSON must be an object, got {type(data).__name__}")
        return cls.from_dict(data)


def check_compatible(specs: list[CCTSpec], names: list[str] | None = None) -> None:
    """Refuse committees whose members disagree on classes, image size or channels.

    Args:
        specs: the members' specs, in committee order.
        names: how to name each member in the error (default: "member <i> (<spec name>)").
    """
    if not specs:
        raise ValueError("a committee needs at least one member, got none")
    names = names or [f"member {i} ({s.name or 'unnamed'})" for i, s in enumerate(specs)]
    first = (specs[0].num_classes, specs[0].img_size, specs[0].in_chans)
    for name, s in zip(names[1:], specs[1:]):
        this = (s.num_classes, s.img_size, s.in_chans)
        if this != first:
            raise ValueError(
                f"{name} has (classes, img_size, in_chans)={this}, {names[0]} has {first}: every member must agree"
            )


class SpecFacts:
    """What every member of a committee shares, read from `self.specs` (checked equal at construction)."""

    specs: list[CCTSpec]

    @property
    def num_classes(self) -> int:
        return self.specs[0].num_classes

    @property
    def img_size(self) -> int:
        return self.specs[0].img_size

    @property
    def in_chans(self) -> int:
        return self.specs[0].in_chans
