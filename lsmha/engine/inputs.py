"""Input checking: whatever the caller sends becomes a (N, C, H, W) batch or a clear ValueError.

Accepted: numpy arrays, torch tensors, PIL images or lists of them; uint8 or floating point (any scale:
every model standardises each image itself); (N, H, W, C) or (N, C, H, W); a
single image without the batch axis. Returned: a C-contiguous numpy array,
uint8 kept as uint8, floats as float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:
    import torch
except ImportError:  # the engine may run on onnxruntime alone
    torch = None  # type: ignore[assignment]


def expected_shapes(img_size: int, in_chans: int) -> str:
    s, c = img_size, in_chans
    return f"(N, {s}, {s}, {c}) or (N, {c}, {s}, {s}) uint8 or float, or one image ({s}, {s}, {c}) / ({c}, {s}, {s})"


def check_images(images: Any, img_size: int, in_chans: int) -> np.ndarray:
    """Validate and normalise `images` to a (N, C, H, W) uint8 or float32 numpy batch.

    Raises:
        ValueError: wrong type, dtype, rank, size or channel count, NaN/Inf, or
            an empty batch; the message says what was expected and what came.
    """
    want = expected_shapes(img_size, in_chans)
    if torch is not None and isinstance(images, torch.Tensor):
        if images.is_meta or images.is_nested or images.layout != torch.strided:
            kind = "meta" if images.is_meta else "nested" if images.is_nested else str(images.layout)
            raise ValueError(f"expected images as a dense tensor holding data {want}, got a {kind} tensor")
        t = images.detach().cpu()
        images = (t.float() if t.dtype == torch.bfloat16 else t).numpy()  # numpy has no bfloat16
    elif not isinstance(images, np.ndarray):
        # lists/tuples of images, and single array-likes such as a PIL image (numpy's array protocol)
        if isinstance(images, (list, tuple)) or hasattr(images, "__array_interface__") or hasattr(images, "__array__"):
            try:
                images = np.asarray(images)
            except Exception as err:  # the object's own __array__ (or a list item's) failed: its error, its type
                raise ValueError(
                    f"expected images convertible to a numpy array {want}; converting "
                    f"{type(images).__name__} raised {type(err).__name__}: {err}"
                ) from err
        else:
            raise ValueError(f"expected images as a numpy array or torch tensor {want}, got {type(images).__name__}")
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"expected images of dtype uint8 or float {want}, got dtype {images.dtype}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"expected images of shape {want}, got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"expected at least one image {want}, got an empty batch of shape {tuple(images.shape)}")
    s, c = img_size, in_chans
    if images.shape[1:] == (c, s, s):
        nchw = images
    elif images.shape[1:] == (s, s, c):
        nchw = images.transpose(0, 3, 1, 2)
    else:
        found = tuple(images.shape)
        if c not in (found[1], found[3]):
            raise ValueError(f"expected {c} channels {want}, got shape {found}")
        raise ValueError(f"expected {s}x{s} images {want}, got shape {found}")
    if nchw.dtype != np.uint8:
        nchw = nchw.astype(np.float32, copy=False)
        if not np.isfinite(nchw).all():
            bad = int((~np.isfinite(nchw)).reshape(len(nchw), -1).any(axis=1).sum())
            raise ValueError(f"expected finite pixel values, got NaN or Inf in {bad} of {len(nchw)} image(s)")
    return np.ascontiguousarray(nchw)
