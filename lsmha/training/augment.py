"""Batch augmentation on the training device with torchvision's v2 transforms.

RandAugment and Random Erasing draw their random parameters once per call, so a
batch is cut into `groups` slices that each get their own draw (per-image calls
cannot keep a GPU fed; one draw per batch would make every image in it alike).
CutMix and MixUp act on the whole batch, as in timm/DeiT, and produce soft targets.
RandAugment and erasing run on uint8 pixels; the batch becomes float32 (still in
0..255) before mixing, since MixUp blends pixels. The model standardises each image itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run, and how hard.

    Args:
        randaugment: apply RandAugment (`ra_num_ops` ops of magnitude `ra_magnitude`).
        erasing: Random Erasing probability per image group (0 disables).
        mixup_alpha: MixUp Beta(α, α) parameter (0 disables).
        cutmix_alpha: CutMix Beta(α, α) parameter (0 disables).
        mix_prob: probability that a batch is mixed at all (CutMix or MixUp, chosen evenly).
        label_smoothing: ε spread uniformly over the classes of the soft target.
        groups: slices per batch that draw their own RandAugment / erasing parameters.
    """

    randaugment: bool = True
    ra_num_ops: int = 2
    ra_magnitude: int = 9
    erasing: float = 0.25
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mix_prob: float = 1.0
    label_smoothing: float = 0.0
    groups: int = 16


class BatchAugment:
    """Callable `(images uint8 (B,3,H,W), labels int64 (B,)) -> (images float32 0..255, soft targets (B,C) float32)`."""

    def __init__(self, config: AugmentConfig, num_classes: int) -> None:
        self.config = config
        self.num_classes = num_classes
        self.randaugment = (
            v2.RandAugment(num_ops=config.ra_num_ops, magnitude=config.ra_magnitude) if config.randaugment else None
        )
        self.erasing = v2.RandomErasing(p=config.erasing, value=0) if config.erasing > 0 else None
        mixers = []
        if config.cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=config.cutmix_alpha, num_classes=num_classes))
        if config.mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=config.mixup_alpha, num_classes=num_classes))
        self.mix = v2.RandomChoice(mixers) if mixers else None

    def per_group(self, images: torch.Tensor) -> torch.Tensor:
        """RandAugment then Random Erasing, each group of the batch with its own draw."""
        if self.randaugment is None and self.erasing is None:
            return images
        parts = []
        for chunk in images.tensor_split(min(self.config.groups, images.shape[0])):
            if self.randaugment is not None:
                chunk = self.randaugment(chunk)
            if self.erasing is not None:
                chunk = self.erasing(chunk)
            parts.append(chunk)
        return torch.cat(parts)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.per_group(images).to(torch.float32)
        if self.mix is not None and torch.rand(()).item() < self.config.mix_prob:
            images, targets = self.mix(images, labels)
        else:
            targets = F.one_hot(labels, self.num_classes).to(torch.float32)
        eps = self.config.label_smoothing
        if eps > 0:
            targets = targets * (1 - eps) + eps / self.num_classes
        return images, targets.to(torch.float32)
