"""A closed committee refuses to run with one clear error, whatever its backend."""

import numpy as np
import pytest
import torch

from lsmha.engine import Committee
from lsmha.engine.backends import available_backends
from lsmha.models import CCT, CCTSpec

IMAGES = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from lsmha.export import export_onnx

    torch.manual_seed(0)
    spec = CCTSpec(n_conv=1, n_blocks=1, dim=16, heads=2, num_classes=5, img_size=16, attn_dropout=0.0)
    directory = tmp_path_factory.mktemp("close_export")
    export_onnx([CCT(spec.replace(name=f"m{i}")).eval() for i in range(2)], directory)
    return directory


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_predict_after_close_raises_one_runtime_error(export, backend):
    reason = available_backends()[backend]
    if reason:
        pytest.skip(reason)
    committee = Committee.load(export, backend)
    before = committee.predict(IMAGES)
    name = committee.backend
    committee.close()
    for call in (committee.predict, committee.predict_logits, committee.member_logits, committee.predict_proba):
        with pytest.raises(RuntimeError, match=r"committee is closed .*load it again with Committee.load"):
            call(IMAGES)
    assert committee.backend == name and len(committee) == 2 and before.shape == (2,)  # the facts stay
    committee.close()  # closing twice is harmless
    with pytest.raises(RuntimeError, match="committee is closed"):
        committee.predict(IMAGES)


def test_a_committee_built_from_models_closes_the_same_way():
    torch.manual_seed(0)
    spec = CCTSpec(n_conv=1, n_blocks=1, dim=16, heads=2, num_classes=5, img_size=16, attn_dropout=0.0)
    committee = Committee([CCT(spec).eval()])
    committee.close()
    with pytest.raises(RuntimeError, match="committee is closed"):
        committee.predict(IMAGES)
    assert not hasattr(committee.runner, "_private")  # probes of private names stay AttributeError
