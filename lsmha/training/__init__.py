"""Training the CCT family with the paper's recipe: data, augmentation, recipe,
the (DDP-ready) loop, committees, throughput, and the `lsmha-train` CLI."""

from .augment import AugmentConfig, BatchAugment
from .committee import CommitteeConfig, Member, committee_report, load_committee_config, member_runs, train_committee
from .data import DATASETS, find_cifar100, load_dataset, num_classes
from .distributed import DistContext, init_distributed
from .evaluate import evaluate_checkpoint, predict_logits
from .loop import RunConfig, TrainResult, soft_target_cross_entropy, train
from .recipe import PRESETS, Recipe, load_recipe, preset
from .schedule import EpochSchedule

__all__ = [
    "DATASETS",
    "PRESETS",
    "AugmentConfig",
    "BatchAugment",
    "CommitteeConfig",
    "DistContext",
    "EpochSchedule",
    "Member",
    "Recipe",
    "RunConfig",
    "TrainResult",
    "committee_report",
    "evaluate_checkpoint",
    "find_cifar100",
    "init_distributed",
    "load_committee_config",
    "load_dataset",
    "load_recipe",
    "member_runs",
    "num_classes",
    "predict_logits",
    "preset",
    "soft_target_cross_entropy",
    "train",
    "train_committee",
]
