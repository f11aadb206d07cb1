"""Recipe presets and TOML, the per-epoch schedule, augmentation, loss, and the paper's member lists."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lsmha.models import PAPER_COMMITTEES, model_spec
from lsmha.training import (
    PRESETS,
    AugmentConfig,
    BatchAugment,
    EpochSchedule,
    Recipe,
    load_committee_config,
    load_recipe,
    soft_target_cross_entropy,
)
from lsmha.training.recipe import dataset_recipe, parse_overrides


def test_presets_are_the_papers():
    backbone, head = load_recipe("backbone"), load_recipe("head")
    assert (backbone.lr, backbone.weight_decay, backbone.schedule, backbone.batch_size) == (6e-4, 6e-2, "cosine", 128)
    assert (head.lr, head.weight_decay, head.schedule, head.step_q, head.step_dt) == (1e-3, 6e-2, "step", 0.78, 10)


def test_toml_recipe_with_unknown_key_fails(tmp_path):
    good = tmp_path / "r.toml"
    good.write_text('[recipe]\npreset = "head"\nepochs = 7\nmixup_alpha = 0.0\n')
    r = load_recipe(str(good))
    assert (r.epochs, r.lr, r.mixup_alpha) == (7, 1e-3, 0.0)
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = 1e-3\nlearning_rate = 2e-3\n")
    with pytest.raises(ValueError, match=r"unknown recipe key\(s\) \['learning_rate'\]"):
        load_recipe(str(bad))
    with pytest.raises(ValueError, match="unknown recipe key"):
        Recipe().replace(momentum=0.9)
    with pytest.raises(ValueError, match="schedule must be"):
        Recipe(schedule="linear")


def _opt() -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])


def test_cosine_anneals_lr_and_weight_decay_together():
    r = Recipe(epochs=10, lr=6e-4, weight_decay=6e-2)
    opt = _opt()
    s = EpochSchedule(opt, r)
    for e in (0, 3, 9):
        lr, wd = s.set_epoch(e)
        f = 0.5 * (1 + math.cos(math.pi * e / 10))
        assert lr == pytest.approx(6e-4 * f) and wd == pytest.approx(6e-2 * f)
        assert opt.param_groups[0]["lr"] == lr and opt.param_groups[0]["weight_decay"] == wd
    warm = EpochSchedule(_opt(), Recipe(epochs=10, warmup_epochs=2))
    assert warm.set_epoch(0)[0] == pytest.approx(6e-4 / 3) and warm.set_epoch(2)[0] == pytest.approx(6e-4)


def test_stepped_schedule_multiplies_by_q_every_dt():
    s = EpochSchedule(_opt(), load_recipe("head"))
    assert [s.set_epoch(e)[0] for e in (0, 9, 10, 25)] == pytest.approx([1e-3, 1e-3, 7.8e-4, 1e-3 * 0.78**2])
    assert s.set_epoch(55)[1] == 6e-2


def test_soft_target_cross_entropy_matches_hard_labels():
    logits, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    assert torch.allclose(
        soft_target_cross_entropy(logits, F.one_hot(labels, 5).float()), F.cross_entropy(logits, labels)
    )


def test_augmentation_is_switchable_and_gives_soft_targets():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(8) % 4
    off = BatchAugment(AugmentConfig(randaugment=False, erasing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0), 4)
    x, t = off(images, labels)
    assert torch.equal(x, images.float()) and torch.equal(t, F.one_hot(labels, 4).float())
    full = BatchAugment(AugmentConfig(label_smoothing=0.1, groups=4), 4)
    x, t = full(images, labels)
    assert x.shape == images.shape and x.dtype == torch.float32 and not torch.equal(x, images.float())
    assert torch.allclose(t.sum(1), torch.ones(8)) and t.min() > 0  # smoothed, mixed
    mixup = BatchAugment(AugmentConfig(randaugment=False, erasing=0.0, cutmix_alpha=0.0), 4)
    _, t = mixup(images, labels)
    assert (t.max(1).values < 1).all()  # every target is a blend of two labels


def _normalised(overrides: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()}


@pytest.mark.parametrize("table", ["table5", "table6", "table7"])
def test_committee_tomls_agree_with_the_papers_member_lists(table):
    config = load_committee_config(table)
    assert [(m.model, _normalised(m.overrides)) for m in config.members] == [
        (name, _normalised(o)) for name, o in PAPER_COMMITTEES[table]
    ]
    for m in config.members:
        model_spec(m.model, **m.overrides)


def test_table4_and_table7_epochs():
    t4 = load_committee_config("table4")
    assert [(m.model, m.overrides["heads"], m.overrides["dim"]) for m in t4.members] == [
        ("cct_2_3x5", 4, 256),
        ("cct_2_3x5", 16, 256),
        ("cct_2_3x5", 32, 512),
        ("cct_2_3x5", 64, 1024),
    ]
    assert [m.epochs for m in load_committee_config("table7").members] == [1000, 3000, 1000, 1000, 1000] + [
        1000,
        2000,
        1000,
        2000,
        2000,
    ]


def test_packaged_committee_name_wins_over_a_directory_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits4").mkdir()  # e.g. a run directory named after its config
    assert len(load_committee_config("digits4").members) == 4
    (tmp_path / "mine").write_text('[[members]]\nmodel = "cct_7_3x1"\n')  # a file without suffix is read
    assert [m.model for m in load_committee_config("mine").members] == ["cct_7_3x1"]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("lr=abc", "--set lr=abc: lr expects a float, got 'abc'"),
        ("weight_decay=abc", "weight_decay expects a float, got 'abc'"),
        ("erasing=x", "erasing expects a float, got 'x'"),
        ("label_smoothing=none", "label_smoothing expects a float, got 'none'"),
        ("betas=0.9", "betas expects two floats (e.g. 0.9,0.999), got '0.9'"),
        ("betas=a,b", "betas expects two floats (e.g. 0.9,0.999), got 'a,b'"),
        ("warmup_epochs=abc", "warmup_epochs expects an int, got 'abc'"),
        ("warmup_epochs=1.5", "warmup_epochs expects an int, got '1.5'"),
        ("seed=abc", "seed expects an int, got 'abc'"),
        ("randaugment=maybe", "randaugment expects true/false (or 1/0, yes/no), got 'maybe'"),
        ("lr", "--set: expected KEY=VALUE, got 'lr'"),
    ],
)
def test_overrides_are_parsed_by_field_type_and_bad_values_name_key_and_type(item, message):
    with pytest.raises(ValueError) as err:
        parse_overrides([item])
    assert message in str(err.value)


def test_overrides_accept_the_documented_spellings():
    got = parse_overrides(["randaugment=no", "compile=YES", "betas=0.8,0.99", "lr=1e-3", "seed=7", "amp=bf16"])
    assert got == {"randaugment": False, "compile": True, "betas": (0.8, 0.99), "lr": 1e-3, "seed": 7, "amp": "bf16"}
    assert parse_overrides(["randaugment=1", "betas=[0.5, 0.9]", "lr=1"]) == {
        "randaugment": True, "betas": (0.5, 0.9), "lr": 1.0
    }  # fmt: skip
    r = Recipe().replace(**parse_overrides(["lr=1", "warmup_epochs=2"]))
    assert isinstance(r.lr, float) and r.warmup_epochs == 2


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"lr": "abc"}, "lr expects a float, got 'abc'"),
        ({"randaugment": "maybe"}, "randaugment expects true/false"),
        ({"epochs": 2.5}, "epochs expects an int, got 2.5"),
        ({"seed": True}, "seed expects an int, got True"),
        ({"betas": [0.9]}, "betas expects two floats"),
    ],
)
def test_toml_values_of_the_wrong_type_name_key_and_type(doc, message):
    with pytest.raises(ValueError) as err:
        Recipe.from_dict(doc, where="r.toml")
    assert "r.toml" in str(err.value) and message in str(err.value)


def test_digits_preset_is_the_default_for_digits_and_the_digits4_recipe():
    digits = load_recipe("digits")
    assert (digits.name, digits.epochs, digits.lr, digits.batch_size) == ("digits", 12, 2e-3, 64)
    assert (digits.randaugment, digits.erasing, digits.mix_prob) == (False, 0.0, 0.5)
    assert dataset_recipe("digits") == "digits"
    assert dataset_recipe("cifar100") == dataset_recipe("synthetic") == "backbone"
    assert "digits" in PRESETS
    assert Recipe.from_dict(load_committee_config("digits4").recipe) == digits.replace(epochs=6)
