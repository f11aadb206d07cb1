"""The CCT family: spec, layers, model, named paper variants, checkpoints, counting.

Light on import: each name loads its module on first use, so reading a spec or a manifest
(`CCTSpec`) does not import torch; the layers, the model and checkpoints do."""

from ..lazy import lazy_getattr

_LAZY = {
    "load": "checkpoint",
    "load_facts": "checkpoint",
    "save": "checkpoint",
    "PAPER_COMMITTEES": "committees",
    "committee_specs": "committees",
    "parse_committee": "committees",
    "count_macs": "counting",
    "count_params": "counting",
    "layer_latency": "counting",
    "Attention": "layers",
    "Block": "layers",
    "ConvTokenizer": "layers",
    "SeqPool": "layers",
    "Standardize": "layers",
    "CCT": "model",
    "create_model": "registry",
    "list_models": "registry",
    "model_spec": "registry",
    "CCTSpec": "spec",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
