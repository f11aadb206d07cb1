import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def tiny_spec():
    from lsmha.models import CCTSpec

    return CCTSpec(n_conv=2, n_blocks=2, dim=32, heads=4, num_classes=10, img_size=16, attn_dropout=0.0, drop_path=0.0)


@pytest.fixture(scope="session")
def serving_export(tmp_path_factory):
    """A tiny two-member committee (dim 32, 32x32 RGB, 10 classes) exported to ONNX once per session."""
    from lsmha import create_model
    from lsmha.export import export_onnx

    torch.manual_seed(0)
    models = [
        create_model("cct_1_3x1", dim=32, heads=2, num_classes=10).eval(),
        create_model("cct_1_3x1", dim=32, heads=4, num_classes=10, n_conv=2).eval(),
    ]
    directory = tmp_path_factory.mktemp("serving_export")
    export_onnx(models, directory)
    return directory
