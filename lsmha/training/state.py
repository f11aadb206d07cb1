"""The resumable training state: one file, written atomically each epoch.

It holds model, optimizer and schedule state, every rank's RNG states and the
last finished epoch, as plain tensors and containers, so it loads with
`torch.load(weights_only=True)` (no arbitrary unpickling). The final model is
not this file: it is the `.safetensors` checkpoint written by `lsmha.save`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .distributed import DistContext

STATE_FILE = "train_state.pt"
FORMAT = "lsmha-train-state-1"


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def gather_rng_states(ctx: DistContext) -> list[dict[str, torch.Tensor]]:
    """Every rank's RNG states (collective: call on all ranks)."""
    mine = rng_state(ctx.device)
    if not ctx.distributed:
        return [mine]
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(ctx.world_size)]
    for key, value in mine.items():
        # gloo and nccl gather tensors that live on the process group's device
        local = value.to(ctx.device)
        parts = [torch.empty_like(local) for _ in range(ctx.world_size)]
        dist.all_gather(parts, local)
        for r, part in enumerate(parts):
            out[r][key] = part.cpu()
    return out


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` via a temporary file, fsync and rename: never half-written."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a signal: the last good state stays, no temporary
        raise


def load_state(path: Path) -> dict[str, Any]:
    """Read a training state written by `save_state` (weights_only: no code runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files
        raise ValueError(
            f"{path} is not a readable training state (truncated or corrupt: {err}); move it away to start the "
            "run again from its first epoch, or choose another --out"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an lsmha training state (format {FORMAT!r} expected)")
    return state
