"""lsmha: a committee engine for low-latency vision transformers with large-scale
multi-head attention (Gross, Halevi, Koresh, Tzach, Kanter).

Light on import: torch (behind the models) and the runtimes (behind the engine) load on
first use of a name below, so a command's `--help` answers before any of them loads.
"""

from .lazy import lazy_getattr
from .version import __version__ as __version__

_LAZY = {
    "CCT": "models",
    "CCTSpec": "models",
    "count_macs": "models",
    "count_params": "models",
    "create_model": "models",
    "layer_latency": "models",
    "list_models": "models",
    "load": "models",
    "save": "models",
    "Committee": "engine",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
