"""Input checking: every bad input gets a ValueError saying what was expected and what came."""

import numpy as np
import pytest
import torch

from lsmha.engine import Committee, check_images
from lsmha.models import CCT, CCTSpec

EXPECTED = r"expected .*\(N, 16, 16, 3\) or \(N, 3, 16, 16\)"


def test_layouts_and_dtypes_normalise_to_nchw():
    nhwc = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    out = check_images(nhwc, 16, 3)
    assert out.shape == (2, 3, 16, 16) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, nhwc.transpose(0, 3, 1, 2))
    assert check_images(nhwc[0], 16, 3).shape == (1, 3, 16, 16)
    assert check_images(torch.rand(2, 3, 16, 16, dtype=torch.float64), 16, 3).dtype == np.float32
    assert check_images(torch.rand(1, 3, 16, 16, dtype=torch.bfloat16), 16, 3).dtype == np.float32


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((2, 1, 16, 16, 3), np.uint8), EXPECTED + r".*, got shape \(2, 1, 16, 16, 3\)"),
        (np.zeros((16, 16), np.uint8), EXPECTED + r".*, got shape \(16, 16\)"),
        (np.zeros((2, 32, 32, 3), np.uint8), r"expected 16x16 images .*got shape \(2, 32, 32, 3\)"),
        (np.zeros((2, 16, 16, 4), np.uint8), r"expected 3 channels .*got shape \(2, 16, 16, 4\)"),
        (np.zeros((0, 3, 16, 16), np.float32), r"expected at least one image .*got an empty batch"),
        (np.full((2, 3, 16, 16), np.nan, np.float32), r"expected finite pixel values, got NaN or Inf in 2 of 2"),
        (np.pad(np.zeros((1, 3, 16, 15)), ((0, 1), (0, 0), (0, 0), (0, 1)), constant_values=np.inf),
         r"expected finite pixel values, got NaN or Inf in 2 of 2"),
        (np.zeros((2, 3, 16, 16), np.int64), r"expected images of dtype uint8 or float .*got dtype int64"),
        (np.zeros((2, 3, 16, 16), bool), r"got dtype bool"),
        ("cat.png", r"expected images as a numpy array or torch tensor .*got str"),
    ],
)  # fmt: skip
def test_bad_inputs_say_expected_and_got(images, message):
    with pytest.raises(ValueError, match=message):
        check_images(images, 16, 3)


def test_committee_rejects_bad_inputs_before_running():
    committee = Committee(CCT(CCTSpec(n_conv=1, n_blocks=1, dim=16, heads=2, num_classes=5, img_size=16)).eval())
    with pytest.raises(ValueError, match=r"expected 16x16 images"):
        committee.predict(np.zeros((1, 3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"NaN or Inf"):
        committee.predict_logits(torch.tensor(float("inf")).expand(1, 3, 16, 16))


def test_a_single_pil_image_is_accepted_like_a_list_of_one():
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    single, listed = check_images(image, 32, 3), check_images([image], 32, 3)
    assert single.shape == listed.shape == (1, 3, 32, 32) and single.dtype == np.uint8
    np.testing.assert_array_equal(single, listed)
    np.testing.assert_array_equal(single[0], rgb.transpose(2, 0, 1))
