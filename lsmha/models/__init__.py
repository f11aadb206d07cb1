"""The CCT family: spec, layers, model, named paper variants, checkpoints, counting."""

from .checkpoint import load, load_facts, save
from .committees import PAPER_COMMITTEES, committee_specs, parse_committee
from .counting import count_macs, count_params, layer_latency
from .layers import Attention, Block, ConvTokenizer, SeqPool, Standardize
from .model import CCT
from .registry import create_model, list_models, model_spec
from .spec import CCTSpec

__all__ = [
    "PAPER_COMMITTEES",
    "committee_specs",
    "parse_committee",
    "CCT",
    "Attention",
    "Block",
    "CCTSpec",
    "ConvTokenizer",
    "SeqPool",
    "Standardize",
    "count_macs",
    "count_params",
    "create_model",
    "layer_latency",
    "list_models",
    "load",
    "load_facts",
    "model_spec",
    "save",
]
