"""The soft-committee engine: `Committee`, input checking, member selection, backends."""

from ..metrics import accuracy, agreement_matrix, mean_agreement, soft_committee
from .backends import (
    AUTO_ORDER,
    BACKENDS,
    CPU_AUTO_ORDER,
    CPU_F32_AUTO_ORDER,
    Backend,
    BackendUnavailable,
    FileRunner,
    Source,
    auto_order,
    available_backends,
    check_options,
    file_runtime,
    open_backend,
    open_file,
)
from .committee import Committee, check_compatible, load_source
from .inputs import check_images
from .selection import Selection, select

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "CPU_AUTO_ORDER",
    "CPU_F32_AUTO_ORDER",
    "Backend",
    "BackendUnavailable",
    "Committee",
    "FileRunner",
    "Selection",
    "Source",
    "accuracy",
    "agreement_matrix",
    "auto_order",
    "available_backends",
    "check_options",
    "file_runtime",
    "open_file",
    "check_compatible",
    "check_images",
    "load_source",
    "mean_agreement",
    "open_backend",
    "select",
    "soft_committee",
]
