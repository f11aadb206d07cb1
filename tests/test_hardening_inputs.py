"""Inputs that are not what they claim: tensors without data, array-likes that raise, and
safetensors files with a forged header length."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

import lsmha
from lsmha.engine.inputs import check_images
from lsmha.models.file_kind import file_kind


class RaisingArray:
    def __array__(self, *args, **kwargs):
        raise RuntimeError("no pixels here")


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.empty(2, 3, 32, 32, device="meta"), "got a meta tensor"),
        (torch.nested.nested_tensor([torch.rand(3, 32, 32), torch.rand(3, 32, 32)]), "got a nested tensor"),
        (torch.rand(2, 3, 32, 32).to_sparse(), "got a torch.sparse_coo tensor"),
        (RaisingArray(), "converting RaisingArray raised RuntimeError: no pixels here"),
        ([RaisingArray()], "converting list raised RuntimeError: no pixels here"),
    ],
)
def test_tensors_without_data_and_raising_array_likes_are_value_errors(images, message):
    """meta, nested (and sparse) tensors and a raising `__array__` are ValueErrors."""
    with pytest.raises(ValueError, match=message):
        check_images(images, 32, 3)


def test_dense_tensors_still_pass():
    assert check_images(torch.rand(2, 3, 32, 32, requires_grad=True), 32, 3).shape == (2, 3, 32, 32)
    assert check_images(np.zeros((1, 32, 32, 3), np.uint8), 32, 3).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("length", [2**62, 2**40, 100_000_000])
def test_huge_safetensors_header_length_is_not_called_a_text_file(tmp_path, length):
    """a safetensors file whose header length is forged is named as one."""
    path = tmp_path / "forged.safetensors"
    path.write_bytes(struct.pack("<Q", length) + b'{"__metadata__":{}}' + b"\0" * 64)
    assert file_kind(path) == f"a safetensors file with a corrupt header length ({length} bytes)"
    with pytest.raises(ValueError, match="not a readable safetensors checkpoint") as info:
        lsmha.load(path)
    assert "text file" not in str(info.value)


def test_text_that_looks_like_a_length_is_still_text(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("abcdefgh{not json}\n")
    assert file_kind(path) == "a text file"
