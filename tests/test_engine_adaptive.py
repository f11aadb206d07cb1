"""The adaptive committee's exit rule and calibration (pure numpy): exact thresholds on hand-built
logits, the budget, the order, and on digits agreement on images it was not calibrated on."""

import math

import numpy as np
import pytest
import torch

from lsmha.engine.adaptive import (
    Calibration,
    apply_rule,
    budget,
    calibrate,
    check_order,
    default_order,
    margins,
    partial_sums,
)
from lsmha.models import CCT, CCTSpec


def _logits_from_sums(sums):
    """Member logits (M, N, C) whose partial sums in committee order are `sums`."""
    sums = np.asarray(sums, dtype=np.float32)
    return np.concatenate([sums[:1], np.diff(sums, axis=0)])


def _right(m):  # partial sum deciding class 0 (the full decision below) with margin m
    return [m, 0.0, 0.0]


def _wrong(m):  # deciding class 1 with margin m
    return [0.0, m, 0.0]


@pytest.fixture
def hand_built():
    """10 images, 3 members; the full committee decides class 0 for all. Stage 1 and 2 margins and
    whether the partial decision is right are chosen so the thresholds can be worked out by hand."""
    stage1 = [_right(5), _wrong(4), _right(3), _wrong(2), _right(1), _wrong(0.5), _right(0.25)] + [_right(0.5)] * 3
    stage2 = [_right(9)] * 3 + [_right(6), _wrong(2), _right(7), _right(1), _right(3), _right(2), _wrong(0.5)]
    full = [[100.0, 0.0, 0.0]] * 10
    return _logits_from_sums([stage1, stage2, full])


def test_budget_is_the_most_disagreements_keeping_the_target():
    assert budget(10, 0.9) == 1  # 10 * 0.1 is 0.9999999999999998 in floating point
    assert budget(1000, 0.999) == 1 and budget(999, 0.999) == 0 and budget(5000, 0.999) == 5
    assert budget(7, 1.0) == 0
    with pytest.raises(ValueError, match=r"target must be in \(0, 1\], got 1.5"):
        budget(10, 1.5)


def test_margins_are_top1_minus_top2():
    logits = np.array([[1.0, 3.0, 2.5], [4.0, 4.0, 0.0], [-1.0, -3.0, -2.0]], dtype=np.float32)
    np.testing.assert_array_equal(margins(logits), [0.5, 0.0, 1.0])


def test_calibration_thresholds_by_hand(hand_built):
    # budget 1. Stage 1: wrong margins 4, 2, 0.5; one may leave, so the threshold must exceed 2: the
    # smallest stage-1 margin above 2 is 3 (images 0, 1, 2 leave; image 1 disagrees, the budget is spent).
    # Stage 2 (images 3..9): wrong margins 2, 0.5, none may leave: the smallest margin above 2 is 3
    # (images 3, 5, 7 leave). Images 4, 6, 8, 9 run all three members.
    cal = calibrate(hand_built, target=0.9)
    assert cal.thresholds == [3.0, 3.0]
    assert cal.order == [0, 1, 2] and cal.n == 10 and cal.target == 0.9
    assert cal.agreement == 0.9
    assert cal.members_run == [3, 3, 4]
    assert cal.mean_members_run == pytest.approx(2.1)
    ruled = apply_rule(hand_built, cal.thresholds, cal.order)
    np.testing.assert_array_equal(ruled.members_run, [1, 1, 1, 2, 3, 2, 3, 2, 3, 3])
    np.testing.assert_array_equal(ruled.decisions, [0, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(ruled.logits[1], [0.0, 4.0, 0.0])  # the partial sum it left with
    np.testing.assert_array_equal(ruled.logits[4], [100.0, 0.0, 0.0])


def test_a_larger_budget_goes_to_the_first_stage(hand_built):
    # target 0.7: budget 3. Stage 1 may let all three wrong images leave, so every image leaves at
    # its smallest margin (0.25), and stage 2 sees no image: nobody leaves there (inf).
    cal = calibrate(hand_built, target=0.7)
    assert cal.thresholds == [0.25, math.inf]
    assert cal.members_run == [10, 0, 0] and cal.agreement == 0.7 and cal.mean_members_run == 1.0
    # target 0.8: budget 2. Stage 1 must stay above the third wrong margin 0.5: threshold 1
    # (images 0..4 leave, 2 wrong); stage 2 has nothing left to spend: above its wrong margin 0.5
    # the smallest margin is 7 (image 5) ... among images 5..9: margins 7, 1, 3, 2, 0.5 -> 1.
    cal = calibrate(hand_built, target=0.8)
    assert cal.thresholds == [1.0, 1.0]
    assert cal.members_run == [5, 4, 1] and cal.agreement == 0.8


def test_target_one_allows_no_disagreement(hand_built):
    cal = calibrate(hand_built, target=1.0)
    # stage 1: above the largest wrong margin 4 -> 5 (image 0); stage 2, images 1..9: wrong margins
    # 2 and 0.5 -> 3 (images 1, 2, 3, 5, 7 with margins 9, 9, 6, 7, 3)
    assert cal.thresholds == [5.0, 3.0]
    assert cal.agreement == 1.0 and cal.members_run == [1, 5, 4]
    ruled = apply_rule(hand_built, cal.thresholds, cal.order)
    np.testing.assert_array_equal(ruled.decisions, np.zeros(10))


def test_an_order_permutes_the_members(hand_built):
    reordered = hand_built[[2, 0, 1]]  # committee order 2, 0, 1 holds the same members
    cal = calibrate(reordered, target=0.9, order=[1, 2, 0])
    assert cal.order == [1, 2, 0] and cal.thresholds == [3.0, 3.0] and cal.members_run == [3, 3, 4]
    np.testing.assert_array_equal(partial_sums(reordered, [1, 2, 0]), partial_sums(hand_built, [0, 1, 2]))


def test_bad_order_and_shapes_are_refused():
    with pytest.raises(ValueError, match=r"order must list each member index 0..2 once, got \[0, 0, 1\]"):
        check_order([0, 0, 1], 3)
    with pytest.raises(ValueError, match=r"shape \(members, N >= 1, classes >= 2\), got \(3, 4\)"):
        calibrate(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="expected 2 thresholds for 3 members, got 1"):
        apply_rule(np.zeros((3, 4, 5)), [1.0], [0, 1, 2])


def test_calibration_round_trips_through_json_with_inf(hand_built):
    cal = calibrate(hand_built, target=0.7)
    cal.facts = {"dataset": "digits", "split": "val"}
    doc = cal.to_dict()
    assert doc["thresholds"] == [0.25, None] and doc["dataset"] == "digits"
    assert Calibration.from_dict(doc) == cal


def test_default_order_is_cheapest_first():
    base = dict(n_conv=1, n_blocks=1, num_classes=10, img_size=16, heads=2)
    specs = [CCTSpec(**base, dim=64), CCTSpec(**base, dim=32), CCTSpec(**{**base, "n_blocks": 2}, dim=32)]
    assert default_order(specs) == [1, 2, 0]
    assert default_order([specs[1], specs[1]]) == [0, 1]  # ties keep committee order


def _digits_committee(dims=(32, 32, 48)):
    """Members with random CCT bodies and classifier heads fitted on digits train (ridge regression on
    the pooled features): a committee that decides like a trained one, built in a second."""
    from lsmha.training import load_dataset

    torch.manual_seed(0)
    train, labels = load_dataset("digits", "train", limit=600)
    base = dict(n_conv=1, n_blocks=1, num_classes=10, img_size=32, attn_dropout=0.0, drop_path=0.0)
    members = [CCT(CCTSpec(**base, dim=d, heads=2)).eval() for d in dims]
    target = torch.nn.functional.one_hot(labels, 10).float() * 10 - 1
    with torch.no_grad():
        for m in members:
            feats = m.pool(m.forward_features(train.float()))  # (N, dim)
            x = torch.cat([feats, torch.ones(len(feats), 1)], dim=1)
            w = torch.linalg.solve(x.T @ x + 1e-2 * torch.eye(x.shape[1]), x.T @ target)  # (dim + 1, 10)
            m.fc.weight.copy_(w[:-1].T)
            m.fc.bias.copy_(w[-1])
    return members


def test_digits_agreement_holds_on_images_not_calibrated_on():
    """A 3-member digits committee calibrated on the first half of val, checked on the second half:
    agreement near the target, fewer members run, and all-member images decided as the committee."""
    from lsmha.training import load_dataset

    members = _digits_committee()
    val, labels = load_dataset("digits", "val")
    with torch.no_grad():
        logits = np.stack([m(val.float()).numpy() for m in members])
    full = logits.sum(axis=0).argmax(axis=1)
    assert (full == labels.numpy()).mean() > 0.85  # a committee that has learnt something
    half = logits.shape[1] // 2
    cal = calibrate(logits[:, :half], target=0.99, order=default_order([m.spec for m in members]))
    assert cal.order == [0, 1, 2] and cal.agreement >= 0.99
    held_out = logits[:, half:]
    ruled = apply_rule(held_out, cal.thresholds, cal.order)
    full_held = full[half:]
    assert (ruled.decisions == full_held).mean() >= 0.97
    assert ruled.members_run.mean() < 2.0  # most images leave early
    everyone = ruled.members_run == 3
    np.testing.assert_array_equal(ruled.decisions[everyone], full_held[everyone])
