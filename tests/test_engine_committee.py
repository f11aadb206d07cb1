"""Committee on the torch backend: the decision rule, inputs in any form, evaluation, selection."""

import numpy as np
import pytest
import torch

from lsmha import metrics
from lsmha.engine import Committee, select
from lsmha.models import CCT, CCTSpec


def _members(n=3, **kw):
    torch.manual_seed(0)
    base = dict(n_conv=1, n_blocks=1, dim=32, heads=2, num_classes=10, img_size=16, attn_dropout=0.0, drop_path=0.0)
    specs = [CCTSpec(**{**base, **kw}, name=f"m{i}").replace(heads=(2, 4, 8)[i % 3]) for i in range(n)]
    return [CCT(s).eval() for s in specs]


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (9, 16, 16, 3), dtype=np.uint8)


def test_predict_is_argmax_of_summed_member_logits(images):
    members = _members(3)
    committee = Committee(members)
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        one_by_one = [m(x).numpy() for m in members]
    total = one_by_one[0] + one_by_one[1] + one_by_one[2]
    np.testing.assert_allclose(committee.predict_logits(images), total, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(committee.predict(images), total.argmax(1))
    assert committee.member_logits(images).shape == (3, 9, 10)
    np.testing.assert_allclose(committee.member_logits(images), np.stack(one_by_one), rtol=1e-5, atol=1e-6)
    proba = committee.predict_proba(images)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(proba.argmax(1), total.argmax(1))


def test_committee_of_one_equals_its_member(images):
    (member,) = _members(1)
    committee = Committee(member)
    with torch.no_grad():
        ref = member(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(committee.predict_logits(images), ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(committee.predict(images), ref.argmax(1))
    assert committee.members == ["m0"] and committee.num_classes == 10 and committee.img_size == 16
    assert committee.in_chans == 3 and committee.backend == "torch[cpu]"


def test_any_scale_and_layout_gives_the_same_decisions(images):
    committee = Committee(_members(2))
    ref = committee.predict(images)
    nchw = images.transpose(0, 3, 1, 2)
    for variant in (
        nchw,
        images.astype(np.float32) / 255.0,
        nchw.astype(np.float64) * 3.7 - 100.0,
        torch.from_numpy(nchw.astype(np.float32) / 255.0),
        torch.from_numpy(images),
    ):
        np.testing.assert_array_equal(committee.predict(variant), ref)
    assert committee.predict(images[4]).tolist() == [ref[4]]  # one image, no batch axis


def test_chunking_matches_one_batch(images):
    members = _members(2)
    whole = Committee(members).predict_logits(images)
    chunked = Committee(members, batch_size=2).predict_logits(images)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
    assert Committee(members, batch_size=4).member_logits(images).shape == (2, 9, 10)


def test_members_must_agree_on_classes_and_image_size():
    (a,) = _members(1)
    (b,) = _members(1, num_classes=7)
    (c,) = _members(1, img_size=8)
    with pytest.raises(ValueError, match=r"\(classes, img_size, in_chans\)=\(7, 16, 3\).*must agree"):
        Committee([a, b])
    with pytest.raises(ValueError, match=r"=\(10, 8, 3\)"):
        Committee([a, c])
    with pytest.raises(ValueError, match="at least one member"):
        Committee([])


def test_accuracy_and_agreement_use_the_committee_metrics(images):
    committee = Committee(_members(3))
    labels = np.arange(9) % 10
    logits = committee.member_logits(images)
    acc = committee.accuracy(images, labels)
    assert acc["committee"] == metrics.accuracy(logits.sum(0), labels)
    assert acc["members"] == [metrics.accuracy(m, labels) for m in logits]
    np.testing.assert_array_equal(committee.agreement(images, labels), metrics.agreement_matrix(logits, labels))
    with pytest.raises(ValueError, match=r"expected labels of shape \(9,\)"):
        committee.accuracy(images, labels[:5])
    with pytest.raises(ValueError, match=r"labels in 0..9"):
        committee.accuracy(images, labels + 10)


def test_greedy_selection_prefers_a_diverse_committee_over_the_best_members():
    # 4 inputs, 2 classes, labels all 0. Members 0 and 1 are the most accurate (3/4) but wrong on the
    # same input; member 2 (1/4) is right exactly where they are wrong. The best pair is {0, 2}, not {0, 1}.
    labels = np.zeros(4, dtype=int)
    right, wrong = [2.0, 0.0], [0.0, 2.0]
    m0 = [right, right, right, wrong]
    m1 = [right, right, right, [0.0, 2.5]]
    m2 = [[0.0, 1.0], [0.0, 1.0], [0.0, 1.5], [9.0, 0.0]]
    logits = np.array([m0, m1, m2])
    assert [metrics.accuracy(m, labels) for m in logits] == [0.75, 0.75, 0.25]
    sel = select(logits, labels, 2)
    assert sel.indices == [0, 2] and sel.accuracy == [0.75, 1.0]
    with pytest.raises(ValueError, match=r"expected k in 1..3"):
        select(logits, labels, 4)


def test_selection_ties_go_to_lower_mean_agreement():
    labels = np.zeros(4, dtype=int)
    r, w = [1.0, 0.0], [0.0, 1.0]
    first = [[3.0, 0.0]] * 4  # always right, dominates any sum
    same = [r, r, w, w]  # agrees with `first` on 2 of 4
    other = [w, w, w, w]  # agrees with `first` on 0 of 4
    sel = select(np.array([first, same, other]), labels, 2)
    assert sel.indices == [0, 2] and sel.accuracy == [1.0, 1.0] and sel.mean_agreement == [1.0, 0.0]


def test_committee_select_on_images(images):
    committee = Committee(_members(3))
    labels = committee.predict(images)  # the committee is right everywhere by construction
    sel = committee.select(images, labels, 3)
    assert sorted(sel.indices) == [0, 1, 2] and sel.accuracy[-1] == 1.0
