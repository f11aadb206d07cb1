"""Training throughput: images/s of full training steps (forward, soft-target loss,
backward, AdamW step) with the data already on the device, with or without the
batch augmentation of the recipe. `lsmha-bench` calls `measure`, and
`compare_attention` to time the attention-dropout paths against each other.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..models import CCT, create_model
from ..models.layers import Attention
from .augment import BatchAugment
from .distributed import resolve_device
from .loop import soft_target_cross_entropy
from .recipe import Recipe


@dataclass(frozen=True)
class Throughput:
    """One measurement: median images/s over `steps` timed steps, and its spread."""

    model: str
    batch_size: int
    device: str
    augment: bool
    amp: bool
    compile: bool
    steps: int
    images_per_s: float
    images_per_s_p10: float
    images_per_s_p90: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    model: str | CCT = "cct_7_3x1",
    batch_size: int = 128,
    device: str = "auto",
    augment: bool = True,
    steps: int = 10,
    warmup: int = 3,
    recipe: Recipe | None = None,
    compile: bool = False,
    **overrides: Any,
) -> Throughput:
    """Training images/s of `model` (a registry name with `overrides`, or a CCT).

    The images are uint8 and live on the device, as in the training loop; with
    `augment`, each step runs the recipe's RandAugment, erasing and CutMix/MixUp first.
    Each step is timed alone (CUDA synchronised); the median and the 10th/90th
    percentiles of images/s are reported.
    """
    dev = resolve_device(device)
    recipe = recipe or Recipe()
    net = create_model(model, **overrides) if isinstance(model, str) else model
    net = net.to(dev).train()
    classes = net.spec.num_classes
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (batch_size, 3, net.spec.img_size, net.spec.img_size), generator=gen, dtype=torch.uint8
    )
    labels = torch.randint(0, classes, (batch_size,), generator=gen)
    images, labels = images.to(dev), labels.to(dev)
    amp = recipe.amp == "bf16" or (recipe.amp == "auto" and dev.type == "cuda")
    aug = BatchAugment(recipe.augment_config(), classes)
    optimizer = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    step_fn = torch.compile(net) if compile else net
    one_hot = torch.nn.functional.one_hot(labels, classes).float()

    def step() -> None:
        x, t = aug(images, labels) if augment else (images, one_hot)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
            logits = step_fn(x)
        loss = soft_target_cross_entropy(logits.float(), t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    _sync(dev)
    rates = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(dev)
        rates.append(batch_size / (time.perf_counter() - t0))
    q = torch.tensor(rates).quantile(torch.tensor([0.5, 0.1, 0.9])).tolist()
    name = model if isinstance(model, str) else (net.spec.name or "CCT")
    return Throughput(name, batch_size, str(dev), augment, amp, compile, steps, q[0], q[1], q[2])


def compare(model: str | CCT = "cct_7_3x1", **kw: Any) -> dict[str, Any]:
    """Model-only and full-pipeline throughput in one run, and their ratio
    (the goal on a GPU: the pipeline at >= 0.9x the model-only step, so augmentation never starves it)."""
    bare = measure(model, augment=False, **kw)
    full = measure(model, augment=True, **kw)
    return {
        "model_only": bare.to_dict(),
        "with_augment": full.to_dict(),
        "ratio": full.images_per_s / bare.images_per_s,
    }


ATTENTION_PATHS = ("sdpa", "chunked")


def set_attention_path(net: torch.nn.Module, path: str) -> None:
    """Train `net`'s attention dropout through "chunked" (`chunked_dropout_attention`
    on a CPU) or "sdpa" (`F.scaled_dot_product_attention`, its math fallback on a CPU)."""
    if path not in ATTENTION_PATHS:
        raise ValueError(f"attention path must be one of {', '.join(ATTENTION_PATHS)}, got {path!r}")
    for m in net.modules():
        if isinstance(m, Attention):
            m.chunked_dropout = path == "chunked"


def compare_attention(
    model: CCT,
    paths: tuple[str, ...] = ATTENTION_PATHS,
    batch_size: int = 128,
    device: str = "auto",
    steps: int = 5,
    warmup: int = 2,
    recipe: Recipe | None = None,
) -> dict[str, Any]:
    """Model-only training images/s of one model under each attention path, interleaved
    step by step (so a loaded machine slows every path alike), and each path's ratio to
    the first. Every path trains its own copy of the same initial weights."""
    dev = resolve_device(device)
    recipe = recipe or Recipe()
    gen = torch.Generator().manual_seed(0)
    size, classes = model.spec.img_size, model.spec.num_classes
    images = torch.randint(0, 256, (batch_size, 3, size, size), generator=gen, dtype=torch.uint8).to(dev)
    targets = torch.nn.functional.one_hot(torch.randint(0, classes, (batch_size,), generator=gen), classes)
    targets = targets.float().to(dev)
    nets, optimizers = {}, {}
    for path in paths:
        net = copy.deepcopy(model).to(dev).train()
        set_attention_path(net, path)
        nets[path] = net
        optimizers[path] = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)

    def step(path: str) -> None:
        loss = soft_target_cross_entropy(nets[path](images), targets)
        optimizers[path].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[path].step()

    for _ in range(warmup):
        for path in paths:
            step(path)
    rates: dict[str, list[float]] = {path: [] for path in paths}
    for _ in range(steps):
        for path in paths:
            _sync(dev)
            t0 = time.perf_counter()
            step(path)
            _sync(dev)
            rates[path].append(batch_size / (time.perf_counter() - t0))
    result: dict[str, Any] = {}
    for path in paths:
        q = torch.tensor(rates[path]).quantile(torch.tensor([0.5, 0.1, 0.9])).tolist()
        result[path] = {"images_per_s": q[0], "images_per_s_p10": q[1], "images_per_s_p90": q[2]}
    result["ratio"] = {path: result[path]["images_per_s"] / result[paths[0]]["images_per_s"] for path in paths[1:]}
    result.update(batch_size=batch_size, device=str(dev), steps=steps, threads=torch.get_num_threads())
    return result
