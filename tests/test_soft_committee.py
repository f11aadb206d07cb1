"""The soft committee is one function (`lsmha.metrics.soft_committee`): numpy and torch alike, and
what every backend's `logits` returns."""

import numpy as np
import pytest
import torch

from lsmha.engine import Committee
from lsmha.metrics import soft_committee
from lsmha.models import CCT, CCTSpec

LOGITS = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32)


def test_numpy_torch_and_a_list_give_the_plain_sum():
    want = LOGITS[0] + LOGITS[1] + LOGITS[2]
    got = soft_committee(LOGITS)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)
    as_torch = soft_committee(torch.from_numpy(LOGITS))
    assert isinstance(as_torch, torch.Tensor)
    np.testing.assert_allclose(as_torch.numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(soft_committee(list(LOGITS)), want, rtol=1e-6)


def test_refuses_logits_that_are_not_members_by_images_by_classes():
    with pytest.raises(ValueError, match=r"expected member logits of shape \(members, N, classes\), got \(4, 5\)"):
        soft_committee(LOGITS[0])
    with pytest.raises(ValueError, match=r"got \(4, 5\)"):
        soft_committee(torch.from_numpy(LOGITS[0]))


def test_committee_logits_are_the_soft_committee_of_its_member_logits():
    torch.manual_seed(0)
    spec = CCTSpec(n_conv=1, n_blocks=1, dim=16, heads=2, num_classes=5, img_size=16, attn_dropout=0.0)
    committee = Committee([CCT(spec).eval() for _ in range(3)])
    images = np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        committee.predict_logits(images), soft_committee(committee.member_logits(images)), rtol=1e-5, atol=1e-5
    )
