"""The training loop: per-epoch train and validation, metrics, resumable state, final checkpoint.

Files under `out/`: `run.json` (spec, recipe, data), `metrics.jsonl` (one line per
epoch), `train_state.pt` (resumable, rewritten atomically each epoch),
`model.safetensors` (the final lsmha checkpoint), `val_logits.npy` and
`val_labels.npy` (for committee studies). Under torchrun only rank 0 writes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from ..metrics import accuracy
from ..models import CCT, CCTSpec, load_facts, save
from .augment import BatchAugment
from .data import load_dataset, num_classes
from .distributed import DistContext, all_reduce_sum, barrier
from .evaluate import predict_logits
from .recipe import Recipe
from .schedule import EpochSchedule
from .state import STATE_FILE, gather_rng_states, load_state, save_state, set_rng_state

MODEL_FILE = "model.safetensors"


@dataclass(frozen=True)
class RunConfig:
    """What to train, on what, and where the files go.

    Args:
        spec: the model (its num_classes must match the data set's).
        recipe: hyper-parameters.
        dataset: "cifar100", "digits" or "synthetic".
        out: run directory.
        data_dir: CIFAR-100 directory.
        limit_train / limit_val: keep only the first N images (smoke runs, tests).
        resume: continue a run found in `out` (a finished run is left as it is).
        progress: show tqdm bars.
    """

    spec: CCTSpec
    recipe: Recipe
    dataset: str
    out: Path
    data_dir: str | None = None
    limit_train: int | None = None
    limit_val: int | None = None
    resume: bool = False
    progress: bool = True

    def identity(self) -> dict[str, Any]:
        """What must not change between a run and its resumption."""
        return {
            "spec": self.spec.to_dict(),
            "recipe": self.recipe.to_dict(),
            "dataset": self.dataset,
            "limit_train": self.limit_train,
            "limit_val": self.limit_val,
        }


@dataclass(frozen=True)
class TrainResult:
    out: Path
    checkpoint: Path
    val_accuracy: float
    epochs: int
    already_finished: bool


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of −Σ_c t_c log softmax(z)_c (timm's SoftTargetCrossEntropy)."""
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()


def check_config(cfg: RunConfig) -> tuple[str, dict[str, Any] | None]:
    """Fail before any training on a bad or clashing configuration.

    Returns ("fresh" | "resume" | "finished", the saved state or None).
    """
    expected = num_classes(cfg.dataset)
    if cfg.spec.num_classes != expected:
        raise ValueError(
            f"model has num_classes={cfg.spec.num_classes} but {cfg.dataset} has {expected} labels; "
            f"pass num_classes={expected}"
        )
    out = Path(cfg.out)
    state_path, run_path = out / STATE_FILE, out / "run.json"
    if not state_path.exists():
        if (out / MODEL_FILE).exists():
            raise ValueError(f"{out} holds a model but no training state; choose another --out")
        return "fresh", None
    if not cfg.resume:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    saved = json.loads(run_path.read_text()) if run_path.exists() else {}
    mismatched = sorted(k for k, v in cfg.identity().items() if saved.get(k) != v)
    if mismatched:
        raise ValueError(
            f"--resume: {out} was started with a different {', '.join(mismatched)}; "
            "resume with the original settings or choose another --out"
        )
    state = load_state(state_path)
    done = int(state["epoch"]) >= cfg.recipe.epochs and (out / MODEL_FILE).exists()
    return ("finished" if done else "resume"), state


def _amp(recipe: Recipe, device: torch.device) -> bool:
    return recipe.amp == "bf16" or (recipe.amp == "auto" and device.type == "cuda")


def _place(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Keep the training set on the GPU when it takes under a quarter of free memory, else pinned."""
    if device.type != "cuda":
        return images
    free, _ = torch.cuda.mem_get_info(device)
    if images.numel() * images.element_size() < free // 4:
        return images.to(device)
    return images.pin_memory()


def _read_metrics(path: Path, upto: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return [r for r in rows if r["epoch"] <= upto]


def train(cfg: RunConfig, ctx: DistContext | None = None) -> TrainResult:
    """Train (or resume, or find finished) the run described by `cfg`."""
    ctx = ctx or DistContext()
    out, recipe, device = Path(cfg.out), cfg.recipe, ctx.device
    mode, state = check_config(cfg)
    if recipe.batch_size % ctx.world_size:
        raise ValueError(f"batch_size={recipe.batch_size} is not divisible by the {ctx.world_size} processes")
    if mode == "finished":
        facts = load_facts(out / MODEL_FILE)
        if ctx.is_main:
            print(f"{out}: already finished ({recipe.epochs} epochs); nothing to do")
        return TrainResult(out, out / MODEL_FILE, float(facts.get("val_accuracy", float("nan"))), recipe.epochs, True)
    train_x, train_y = load_dataset(cfg.dataset, "train", cfg.data_dir, limit=cfg.limit_train)
    val_x, val_y = load_dataset(cfg.dataset, "val", cfg.data_dir, limit=cfg.limit_val)
    barrier(ctx)  # every rank has checked the configuration before rank 0 writes
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps(cfg.identity(), indent=2) + "\n")

    torch.manual_seed(recipe.seed)
    model = CCT(cfg.spec).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, betas=recipe.betas
    )
    schedule = EpochSchedule(optimizer, recipe)
    torch.manual_seed(recipe.seed * 1000 + ctx.rank + 1)  # augmentation differs per rank
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rngs = state["rng"]
        if len(rngs) == ctx.world_size:
            set_rng_state(rngs[ctx.rank], device)
        start = int(state["epoch"])
        if ctx.is_main:
            print(f"{out}: resuming after epoch {start} of {recipe.epochs}")
    history = _read_metrics(out / "metrics.jsonl", start) if ctx.is_main else []
    if ctx.is_main:  # drop lines of an epoch that was running when the process died
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))

    net: torch.nn.Module = model
    if ctx.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if recipe.compile:
        net = torch.compile(net)
    amp = _amp(recipe, device)
    augment = BatchAugment(recipe.augment_config(), cfg.spec.num_classes)
    train_x = _place(train_x, device)
    sampler = DistributedSampler(
        train_y, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=recipe.seed, drop_last=False
    )
    per_rank = recipe.batch_size // ctx.world_size
    val_logits = None
    for epoch in range(start, recipe.epochs):
        sampler.set_epoch(epoch)
        lr, wd = schedule.set_epoch(epoch)
        indices = torch.tensor(list(sampler), dtype=torch.long)
        batches = list(indices.split(per_rank))
        if len(batches) > 1 and len(batches[-1]) < per_rank:
            batches.pop()  # equal batches: CutMix/MixUp pair images within a batch
        model.train()
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss·n, correct, n
        t0 = time.perf_counter()
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=not (cfg.progress and ctx.is_main))
        for step, idx in enumerate(bar):
            x = train_x[idx.to(train_x.device)].to(device, non_blocking=True)
            y = train_y[idx].to(device, non_blocking=True)
            x, targets = augment(x, y)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(x)
            loss = soft_target_cross_entropy(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = y.shape[0]
            sums += torch.stack(
                [
                    loss.detach().double() * n,
                    (logits.argmax(1) == targets.argmax(1)).sum().double(),
                    torch.tensor(n, dtype=torch.float64, device=device),
                ]
            )
            if not bar.disable and step % 10 == 0:  # .item() waits for the GPU: not every step
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        sums = all_reduce_sum(ctx, sums)
        train_time = time.perf_counter() - t0
        val_logits = predict_logits(model, val_x, recipe.eval_batch_size, device, amp, ctx)
        val_acc = accuracy(val_logits.numpy(), val_y.numpy())
        val_loss = float(F.cross_entropy(val_logits, val_y))
        row = {
            "epoch": epoch + 1,
            "train_loss": float(sums[0] / sums[2]),
            "train_accuracy": float(sums[1] / sums[2]),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": lr,
            "weight_decay": wd,
            "images_per_s": float(sums[2]) / train_time,
            "world_size": ctx.world_size,
        }
        rngs = gather_rng_states(ctx)
        if ctx.is_main:
            # metrics line first: a crash between the two redoes this epoch and rewrites its line
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            save_state(
                out / STATE_FILE,
                {
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "rng": rngs,
                },
            )
            tqdm.write(
                f"epoch {epoch + 1}/{recipe.epochs}: train loss {row['train_loss']:.4f}, "
                f"val acc {val_acc:.4f}, lr {lr:.2e}, {row['images_per_s']:.0f} img/s"
            )
        barrier(ctx)

    if val_logits is None:  # died after the last epoch's state, before the final save
        val_logits = predict_logits(model, val_x, recipe.eval_batch_size, device, amp, ctx)
    val_acc = accuracy(val_logits.numpy(), val_y.numpy())
    if ctx.is_main:
        np.save(out / "val_logits.npy", val_logits.numpy().astype(np.float32))
        np.save(out / "val_labels.npy", val_y.numpy())
        facts = {"dataset": cfg.dataset, "epochs": recipe.epochs, "val_accuracy": val_acc, "recipe": recipe.to_dict()}
        save(model, out / MODEL_FILE, **facts)
        (out / "result.json").write_text(json.dumps({**facts, "world_size": ctx.world_size}, indent=2) + "\n")
    barrier(ctx)
    return TrainResult(out, out / MODEL_FILE, val_acc, recipe.epochs, False)
