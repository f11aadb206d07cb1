"""Training the CCT family with the paper's recipe: data, augmentation, recipe,
the (DDP-ready) loop, committees, throughput, and the `lsmha-train` CLI.

Light on import: each name loads its module (and torch) on first use, so `lsmha-train --help`
answers before torch loads."""

from ..lazy import lazy_getattr

_LAZY = {
    "AugmentConfig": "augment",
    "BatchAugment": "augment",
    "CommitteeConfig": "committee",
    "Member": "committee",
    "committee_report": "committee",
    "load_committee_config": "committee",
    "member_runs": "committee",
    "train_committee": "committee",
    "DATASETS": "choices",
    "PRESETS": "choices",
    "find_cifar100": "data",
    "load_dataset": "data",
    "num_classes": "data",
    "DistContext": "distributed",
    "init_distributed": "distributed",
    "evaluate_checkpoint": "evaluate",
    "predict_logits": "evaluate",
    "RunConfig": "loop",
    "TrainResult": "loop",
    "soft_target_cross_entropy": "loop",
    "train": "loop",
    "Recipe": "recipe",
    "load_recipe": "recipe",
    "preset": "recipe",
    "EpochSchedule": "schedule",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
