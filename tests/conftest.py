import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def tiny_spec():
    from lsmha.models import CCTSpec

    return CCTSpec(n_conv=2, n_blocks=2, dim=32, heads=4, num_classes=10, img_size=16, attn_dropout=0.0, drop_path=0.0)
