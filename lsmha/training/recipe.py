"""`Recipe`: every training hyper-parameter in one dataclass, read from TOML.

The paper's Appendix: AdamW, batch 128, soft-target cross-entropy, CutMix, MixUp,
RandAugment and Random Erasing; learning rate η AND weight decay α both annealed
per epoch by cosine, unless a stepped schedule (q, Δt) is given, which multiplies
η by q every Δt epochs. Presets: "backbone" (η 6e-4, α 6e-2), "head" (η 1e-3,
α 6e-2, (0.78, 10)), "digits" (the embedded digits set in 12 epochs) and
"fashion" (Fashion-MNIST in 2 epochs on a few CPU cores).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .augment import AugmentConfig
from .choices import PRESETS

CONFIG_DIR = Path(__file__).parent / "configs"
# The preset a run gets when none is named: the paper's 300-epoch recipe learns next to
# nothing on 8x8 digits in the few epochs such a run is worth.
DATASET_RECIPES = {"digits": "digits", "fashion-mnist": "fashion"}


@dataclass(frozen=True)
class Recipe:
    """One training run's hyper-parameters (model and data set are chosen apart).

    Args:
        epochs: training epochs.
        batch_size: images per optimizer step, summed over all processes.
        lr: peak learning rate η.
        weight_decay: peak AdamW weight decay α.
        betas: AdamW betas.
        schedule: "cosine" (η and α annealed together to `min_factor`) or "step"
            (η × q every Δt epochs, α constant).
        step_q: q of the stepped schedule.
        step_dt: Δt (epochs) of the stepped schedule.
        warmup_epochs: linear warm-up of η and α before the schedule starts.
        min_factor: floor of the cosine factor (0 anneals to zero).
        randaugment, ra_num_ops, ra_magnitude, erasing, mixup_alpha, cutmix_alpha,
            mix_prob, label_smoothing, augment_groups: see `AugmentConfig`.
        amp: "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" or "fp32".
        compile: wrap the model in `torch.compile` for training.
        seed: seeds weights, shuffling and augmentation.
        eval_batch_size: images per validation step.
        name: the preset or file it came from (not part of the recipe's identity).
    """

    epochs: int = 300
    batch_size: int = 128
    lr: float = 6e-4
    weight_decay: float = 6e-2
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"
    step_q: float = 0.78
    step_dt: int = 10
    warmup_epochs: int = 0
    min_factor: float = 0.0
    # augmentation, flat for TOML; defaults are AugmentConfig's, the one place they are set
    randaugment: bool = AugmentConfig.randaugment
    ra_num_ops: int = AugmentConfig.ra_num_ops
    ra_magnitude: int = AugmentConfig.ra_magnitude
    erasing: float = AugmentConfig.erasing
    mixup_alpha: float = AugmentConfig.mixup_alpha
    cutmix_alpha: float = AugmentConfig.cutmix_alpha
    mix_prob: float = AugmentConfig.mix_prob
    label_smoothing: float = AugmentConfig.label_smoothing
    augment_groups: int = AugmentConfig.groups
    amp: str = "auto"
    compile: bool = False
    seed: int = 0
    eval_batch_size: int = 256
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _typed(f.name, getattr(self, f.name), "recipe"))
        for key in ("epochs", "batch_size", "step_dt", "eval_batch_size", "augment_groups"):
            if getattr(self, key) < 1:
                raise ValueError(f"recipe {key} must be a positive int, got {getattr(self, key)!r}")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs and self.warmup_epochs:
            raise ValueError(f"recipe warmup_epochs must be in [0, epochs={self.epochs}), got {self.warmup_epochs}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"recipe needs lr > 0 and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"recipe schedule must be 'cosine' or 'step', got {self.schedule!r}")
        if not 0 < self.step_q <= 1:
            raise ValueError(f"recipe step_q must be in (0, 1], got {self.step_q}")
        if self.amp not in ("auto", "bf16", "fp32"):
            raise ValueError(f"recipe amp must be 'auto', 'bf16' or 'fp32', got {self.amp!r}")
        for key in ("erasing", "mix_prob", "label_smoothing", "min_factor"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"recipe {key} must be in [0, 1], got {getattr(self, key)}")

    def replace(self, **changes: Any) -> Recipe:
        """A copy with `changes`; unknown keys fail with the list of known ones."""
        check_keys(changes, "recipe override")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "betas": list(self.betas)}

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = "recipe") -> Recipe:
        """Build from a dict (e.g. TOML); a `preset` key starts from that preset."""
        doc = dict(doc)
        base = preset(doc.pop("preset")) if "preset" in doc else cls()
        check_keys(doc, where)
        for key, value in doc.items():
            _typed(key, value, where)  # say where a bad value came from before the dataclass sees it
        return dataclasses.replace(base, **doc)

    def augment_config(self) -> AugmentConfig:
        """The augmentation fields as an `AugmentConfig` (`augment_groups` is its `groups`)."""
        names = {f.name for f in dataclasses.fields(AugmentConfig)} - {"groups"}
        return AugmentConfig(groups=self.augment_groups, **{n: getattr(self, n) for n in names})

    def describe(self) -> str:
        """The main hyper-parameters on one line, as `KEY=VALUE` (the form `--set` takes)."""
        return (
            f"epochs={self.epochs} batch_size={self.batch_size} lr={self.lr:g} "
            f"weight_decay={self.weight_decay:g} schedule={self.schedule} randaugment={str(self.randaugment).lower()} "
            f"erasing={self.erasing:g} mix_prob={self.mix_prob:g}"
        )


# The only spellings a boolean takes on the command line ("maybe" is an error, not True).
_BOOL_TEXT = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
# Field type (its annotation) -> how an error message names it.
_KINDS = {
    "int": "an int",
    "float": "a float",
    "bool": "true/false (or 1/0, yes/no)",
    "str": "a string",
    "tuple[float, float]": "two floats (e.g. 0.9,0.999)",
}


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(Recipe)}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# Field type -> (accepts a parsed value, converts it). An int is a valid float; a list of two
# numbers valid betas (TOML has no tuples).
_CHECKS = {
    "bool": (lambda v: isinstance(v, bool), bool),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), int),
    "float": (_number, float),
    "str": (lambda v: isinstance(v, str), str),
    "tuple[float, float]": (
        lambda v: isinstance(v, list | tuple) and len(v) == 2 and all(map(_number, v)),
        lambda v: (float(v[0]), float(v[1])),
    ),
}


def _typed(key: str, value: Any, where: str) -> Any:
    """`value` as field `key`'s type; anything else fails with the key, the expected type and the value."""
    kind = _field_types()[key]
    accepts, convert = _CHECKS[kind]
    if not accepts(value):
        raise ValueError(f"{where}: {key} expects {_KINDS[kind]}, got {value!r}")
    return convert(value)


def _from_text(key: str, text: str, where: str) -> Any:
    """Command-line text as field `key`'s type."""
    kind = _field_types()[key]
    try:
        if kind == "bool":
            return _BOOL_TEXT[text.lower()]
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind.startswith("tuple"):
            first, second = text.strip("[]() ").split(",")
            return (float(first), float(second))
        return text
    except (KeyError, ValueError):
        raise ValueError(f"{where} {key}={text}: {key} expects {_KINDS[kind]}, got {text!r}") from None


def parse_overrides(items: list[str], where: str = "--set") -> dict[str, Any]:
    """`KEY=VALUE` strings as recipe fields, each VALUE parsed by its field's type.

    Booleans take true/false, 1/0 or yes/no; betas two comma-separated floats. A bad
    key or value fails with the key, the expected type and what was given."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not eq or not key:
            raise ValueError(f"{where}: expected KEY=VALUE, got {item!r}")
        check_keys({key: text}, where)
        out[key] = _from_text(key, text, where)
    return out


def check_keys(doc: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ValueError(f"{where}: unknown recipe key(s) {unknown}; known keys: {', '.join(sorted(known))}")


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a TOML file with the standard library's tomllib."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TOML file not found: {path}")
    with open(path, "rb") as f:
        try:
            return tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path} is not valid TOML: {err}") from err


def preset(name: str) -> Recipe:
    """A packaged recipe (configs/<name>.toml): "backbone", "head", "digits" or "fashion"."""
    if name not in PRESETS:
        raise ValueError(f"unknown recipe preset {name!r}; presets: {', '.join(PRESETS)}")
    return Recipe.from_dict(read_toml(CONFIG_DIR / f"{name}.toml"), where=f"preset {name}")


def dataset_recipe(dataset: str) -> str:
    """The preset a run on `dataset` gets when no recipe is named."""
    return DATASET_RECIPES.get(dataset, "backbone")


def load_recipe(name_or_path: str) -> Recipe:
    """A preset name or a TOML file (a top-level table, or its [recipe] table)."""
    if name_or_path in PRESETS:
        return preset(name_or_path)
    doc = read_toml(name_or_path)
    doc = doc.get("recipe", doc)
    return Recipe.from_dict({"name": Path(name_or_path).name, **doc}, where=str(name_or_path))
