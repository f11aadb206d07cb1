"""Named paper variants: each a tiny function filling a `CCTSpec`, one factory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .model import CCT
from .spec import CCTSpec

_REGISTRY: dict[str, Callable[[], CCTSpec]] = {}


def register(fn: Callable[[], CCTSpec]) -> Callable[[], CCTSpec]:
    _REGISTRY[fn.__name__] = fn
    return fn


@register
def cct_7_3x1() -> CCTSpec:
    """The deep reference: 1 conv, 7 blocks, dim 256, 4 heads (3,783,269 params)."""
    return CCTSpec(n_conv=1, n_blocks=7, dim=256, heads=4)


@register
def cct_1_3x1() -> CCTSpec:
    """1 conv, 1 block, LS-MHA dim 1024 with 64 heads of 16 (Tables 3, 7)."""
    return CCTSpec(n_conv=1, n_blocks=1, dim=1024, heads=64)


@register
def cct_1_3x2() -> CCTSpec:
    """2 convs, 1 block, dim 1024, 64 heads (Table 7)."""
    return CCTSpec(n_conv=2, n_blocks=1, dim=1024, heads=64)


@register
def cct_2_3x2() -> CCTSpec:
    """2 convs, 2 blocks, dim 512, 32 heads (Table 6)."""
    return CCTSpec(n_conv=2, n_blocks=2, dim=512, heads=32)


@register
def cct_2_3x5() -> CCTSpec:
    """5 convs (pool after the first only: 256 tokens), 2 blocks, dim 256, 16 heads (Tables 4, 5)."""
    return CCTSpec(n_conv=5, n_blocks=2, dim=256, heads=16)


def list_models() -> list[str]:
    """Names accepted by `create_model`."""
    return sorted(_REGISTRY)


def model_spec(name: str, **overrides: Any) -> CCTSpec:
    """The spec of a named variant with any fields overridden (validated)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    spec = _REGISTRY[name]()
    try:
        return spec.replace(name=name, **overrides)
    except TypeError as err:
        raise ValueError(f"bad override for {name}: {err}; fields: {sorted(spec.to_dict())}") from err


def create_model(name: str, **overrides: Any) -> CCT:
    """Build a named variant, e.g. `create_model("cct_2_3x2", dim=1024, heads=64)`."""
    return CCT(model_spec(name, **overrides))
