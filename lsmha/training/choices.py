"""The names `lsmha-train` offers: data sets and recipe presets.

Kept apart from the modules that import torch (`data`, `recipe` through `augment`), so the
command's `--help` answers before torch loads; those modules take their names from here."""

DATASETS = ("cifar100", "fashion-mnist", "digits", "synthetic")
PRESETS = ("backbone", "head", "digits", "fashion")
