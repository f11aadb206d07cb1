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

from ..artifacts import write_json_atomic
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
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"


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
        name: prefix of its progress lines (a committee member's name); not part of its identity.
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
    name: str = ""

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
    state_path, run_path = out / STATE_FILE, out / RUN_FILE
    if not state_path.exists():
        if (out / MODEL_FILE).exists():
            raise ValueError(f"{out} holds a model but no training state; choose another --out")
        return "fresh", None
    if not cfg.resume:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if not run_path.exists():
        raise ValueError(f"{out} holds {STATE_FILE} but not {RUN_FILE} (the run's settings); choose another --out")
    changed = _differences(json.loads(run_path.read_text()), cfg.identity())
    if changed:
        raise ValueError(
            f"cannot continue {out}: it was started with {'; '.join(changed)}; "
            "continue it with the original settings or choose another --out"
        )
    state = load_state(state_path)
    done = int(state["epoch"]) >= cfg.recipe.epochs and (out / MODEL_FILE).exists()
    return ("finished" if done else "resume"), state


def _differences(saved: Any, now: Any, where: str = "") -> list[str]:
    """`field=saved (now value)` for every leaf that differs, fields named by their path (recipe.lr)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        keys = list(now) + [k for k in saved if k not in now]
        return [d for k in keys for d in _differences(saved.get(k), now.get(k), f"{where}{k}.")]
    if saved == now:
        return []
    return [f"{where.rstrip('.')}={json.dumps(saved)} (now {json.dumps(now)})"]


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


@dataclass
class _Training:
    """What one run trains with: the model, its optimizer and schedule, the data, the sampler."""

    cfg: RunConfig
    ctx: DistContext
    model: CCT
    optimizer: torch.optim.Optimizer
    schedule: EpochSchedule
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    net: torch.nn.Module | None = None  # the model as trained: under DDP and/or torch.compile
    augment: BatchAugment | None = None
    sampler: DistributedSampler | None = None
    amp: bool = False

    def say(self, text: str) -> None:
        """A progress line from rank 0, prefixed with the run's name (a committee member's)."""
        if self.ctx.is_main:
            tqdm.write(f"{self.cfg.name} {text}" if self.cfg.name else text)


def train(cfg: RunConfig, ctx: DistContext | None = None) -> TrainResult:
    """Train (or resume, or find finished) the run described by `cfg`."""
    ctx = ctx or DistContext()
    mode, state = check_config(cfg)
    if cfg.recipe.batch_size % ctx.world_size:
        raise ValueError(f"batch_size={cfg.recipe.batch_size} is not divisible by the {ctx.world_size} processes")
    if mode == "finished":
        return _finished(cfg, ctx)
    run = _build(cfg, ctx)
    start = _restore(run, state)
    _keep_metrics_upto(run, start)
    _prepare(run)
    val_logits = None
    for epoch in range(start, cfg.recipe.epochs):
        row, val_logits = _train_epoch(run, epoch)
        _save_epoch(run, epoch, row)
    return _finish(run, val_logits)


def _finished(cfg: RunConfig, ctx: DistContext) -> TrainResult:
    out = Path(cfg.out)
    facts = load_facts(out / MODEL_FILE)
    if ctx.is_main:
        epochs = cfg.recipe.epochs
        print(f"{out}: already finished ({epochs} epoch{'' if epochs == 1 else 's'}); nothing to do")
    val_acc = float(facts.get("val_accuracy", float("nan")))
    return TrainResult(out, out / MODEL_FILE, val_acc, cfg.recipe.epochs, True)


def _build(cfg: RunConfig, ctx: DistContext) -> _Training:
    """Load the data, record the run's settings, make the model, optimizer and schedule."""
    train_x, train_y = load_dataset(cfg.dataset, "train", cfg.data_dir, limit=cfg.limit_train)
    val_x, val_y = load_dataset(cfg.dataset, "val", cfg.data_dir, limit=cfg.limit_val)
    barrier(ctx)  # every rank has checked the configuration before rank 0 writes
    out, recipe = Path(cfg.out), cfg.recipe
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / RUN_FILE, cfg.identity())
    torch.manual_seed(recipe.seed)  # the same initial weights on every rank
    model = CCT(cfg.spec).to(ctx.device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, betas=recipe.betas
    )
    schedule = EpochSchedule(optimizer, recipe)
    torch.manual_seed(recipe.seed * 1000 + ctx.rank + 1)  # augmentation differs per rank
    return _Training(cfg, ctx, model, optimizer, schedule, train_x, train_y, val_x, val_y)


def _restore(run: _Training, state: dict[str, Any] | None) -> int:
    """Load a saved state into the run (weights, optimizer, schedule, RNGs); the first epoch to train."""
    if state is None:
        return 0
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.schedule.load_state_dict(state["schedule"])
    rngs = state["rng"]
    if len(rngs) == run.ctx.world_size:  # another process count keeps the fresh seeds
        set_rng_state(rngs[run.ctx.rank], run.ctx.device)
    start = int(state["epoch"])
    if run.ctx.is_main:
        print(f"{run.cfg.out}: resuming after epoch {start} of {run.cfg.recipe.epochs}")
    return start


def _keep_metrics_upto(run: _Training, epoch: int) -> None:
    """Drop metrics lines of an epoch that was running when the process died."""
    if run.ctx.is_main:
        path = Path(run.cfg.out) / METRICS_FILE
        history = _read_metrics(path, epoch)
        path.write_text("".join(json.dumps(r) + "\n" for r in history))


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


def _prepare(run: _Training) -> None:
    """Wrap the model for DDP and torch.compile; set up augmentation, data placement and sampling."""
    recipe, ctx = run.cfg.recipe, run.ctx
    net: torch.nn.Module = run.model
    if ctx.distributed:
        net = DistributedDataParallel(run.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if recipe.compile:
        net = torch.compile(net)
    run.net = net
    run.amp = _amp(recipe, ctx.device)
    run.augment = BatchAugment(recipe.augment_config(), run.cfg.spec.num_classes)
    run.train_x = _place(run.train_x, ctx.device)
    run.sampler = DistributedSampler(
        run.train_y, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=recipe.seed, drop_last=False
    )


def _epoch_batches(run: _Training, epoch: int) -> list[torch.Tensor]:
    """This rank's index batches of `epoch`, all of one size (CutMix/MixUp pair images within a batch)."""
    per_rank = run.cfg.recipe.batch_size // run.ctx.world_size
    run.sampler.set_epoch(epoch)
    batches = list(torch.tensor(list(run.sampler), dtype=torch.long).split(per_rank))
    if len(batches) > 1 and len(batches[-1]) < per_rank:
        batches.pop()
    return batches


def _train_epoch(run: _Training, epoch: int) -> tuple[dict[str, Any], torch.Tensor]:
    """One epoch of training, then validation: the metrics row and the validation logits."""
    cfg, ctx, device = run.cfg, run.ctx, run.ctx.device
    lr, wd = run.schedule.set_epoch(epoch)
    batches = _epoch_batches(run, epoch)
    run.model.train()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss·n, correct, n
    t0 = time.perf_counter()
    desc = f"{cfg.name} epoch {epoch + 1}/{cfg.recipe.epochs}".lstrip()
    bar = tqdm(batches, desc=desc, disable=not (cfg.progress and ctx.is_main))
    for step, idx in enumerate(bar):
        x = run.train_x[idx.to(run.train_x.device)].to(device, non_blocking=True)
        y = run.train_y[idx].to(device, non_blocking=True)
        x, targets = run.augment(x, y)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=run.amp):
            logits = run.net(x)
        loss = soft_target_cross_entropy(logits.float(), targets)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        n = y.shape[0]
        correct = (logits.argmax(1) == targets.argmax(1)).sum().double()
        sums += torch.stack([loss.detach().double() * n, correct, torch.tensor(n, dtype=torch.float64, device=device)])
        if not bar.disable and step % 10 == 0:  # .item() waits for the GPU: not every step
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    sums = all_reduce_sum(ctx, sums)
    train_time = time.perf_counter() - t0
    val_logits = _validate(run)
    row = {
        "epoch": epoch + 1,
        "train_loss": float(sums[0] / sums[2]),
        "train_accuracy": float(sums[1] / sums[2]),
        "val_loss": float(F.cross_entropy(val_logits, run.val_y)),
        "val_accuracy": accuracy(val_logits.numpy(), run.val_y.numpy()),
        "lr": lr,
        "weight_decay": wd,
        "images_per_s": float(sums[2]) / train_time,
        "world_size": ctx.world_size,
    }
    return row, val_logits


def _validate(run: _Training) -> torch.Tensor:
    return predict_logits(run.model, run.val_x, run.cfg.recipe.eval_batch_size, run.ctx.device, run.amp, run.ctx)


def _save_epoch(run: _Training, epoch: int, row: dict[str, Any]) -> None:
    """Append the metrics line and rewrite the resumable state (rank 0), then wait for every rank."""
    out = Path(run.cfg.out)
    rngs = gather_rng_states(run.ctx)
    if run.ctx.is_main:
        # metrics line first: a crash between the two redoes this epoch and rewrites its line
        with open(out / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
        state = {
            "epoch": epoch + 1,
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "schedule": run.schedule.state_dict(),
            "rng": rngs,
        }
        save_state(out / STATE_FILE, state)
        run.say(
            f"epoch {epoch + 1}/{run.cfg.recipe.epochs}: train loss {row['train_loss']:.4f}, "
            f"val acc {row['val_accuracy']:.4f}, lr {row['lr']:.2e}, {row['images_per_s']:.0f} img/s"
        )
    barrier(run.ctx)


def _finish(run: _Training, val_logits: torch.Tensor | None) -> TrainResult:
    """Write the validation logits and labels, the final checkpoint and result.json (rank 0)."""
    cfg, out = run.cfg, Path(run.cfg.out)
    if val_logits is None:  # died after the last epoch's state, before the final save
        val_logits = _validate(run)
    val_acc = accuracy(val_logits.numpy(), run.val_y.numpy())
    if run.ctx.is_main:
        np.save(out / "val_logits.npy", val_logits.numpy().astype(np.float32))
        np.save(out / "val_labels.npy", run.val_y.numpy())
        facts = {"dataset": cfg.dataset, "epochs": cfg.recipe.epochs, "val_accuracy": val_acc}
        facts["recipe"] = cfg.recipe.to_dict()
        save(run.model, out / MODEL_FILE, **facts)
        write_json_atomic(out / "result.json", {**facts, "world_size": run.ctx.world_size})
    barrier(run.ctx)
    return TrainResult(out, out / MODEL_FILE, val_acc, cfg.recipe.epochs, False)
