"""Training-batch augmentation policies: fastai's ``aug_transforms``, or small affine moves.

``fastai`` is fastai's default photo policy (flips, perspective warps, zoom, lighting): right
for pets or products, where a mirrored photo shows the same thing. ``affine`` moves each
image a little (rotation, scale, shift, brightness) and never mirrors or warps it: right for
handwriting, digits, symbols and glyphs, where a mirrored character is another character.
Both run on ``[0, 1]`` batches before normalisation, with parameters drawn for every image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from fasttransform import Transform

from twinnet.errors import TwinnetError
from twinnet.train.fastai_compat import quiet_fastai_import

__all__ = ["AUG_POLICIES", "AffineJitter", "SmallAffine", "batch_augmentations", "policy_name"]

#: Augmentation policies by name; ``none`` trains on the images as they are.
AUG_POLICIES = ("fastai", "affine", "none")


@dataclass(frozen=True)
class AffineJitter:
    """Ranges of the ``affine`` policy: each image gets its own draw inside them.

    Args:
        rotate: largest rotation, degrees either way.
        scale: largest zoom factor, in or out (1.1 means 1/1.1 to 1.1).
        shift: largest shift, as a share of the side, either way on each axis.
        brightness: largest change of brightness, added to ``[0, 1]`` pixels.
    """

    rotate: float = 10.0
    scale: float = 1.1
    shift: float = 0.08
    brightness: float = 0.1


class SmallAffine(Transform):
    """One ``affine_grid`` + ``grid_sample`` per batch, with per-image random parameters.

    Borders are extended (``padding_mode="border"``), so a shifted character keeps a plain
    background instead of black bands. Training batches only (``split_idx = 0``).
    """

    split_idx = 0
    order = 50

    def __init__(self, jitter: AffineJitter | None = None) -> None:
        super().__init__()
        self.jitter = jitter or AffineJitter()

    def encodes(self, x: torch.Tensor) -> torch.Tensor:
        j = self.jitter
        n = x.shape[0]
        plain = torch.Tensor(x).float()

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return torch.empty(n, device=x.device).uniform_(lo, hi)

        angle = uniform(-j.rotate, j.rotate) * (math.pi / 180)
        inv_scale = torch.exp(uniform(-math.log(j.scale), math.log(j.scale)))
        cos, sin = torch.cos(angle) * inv_scale, torch.sin(angle) * inv_scale
        tx, ty = uniform(-2 * j.shift, 2 * j.shift), uniform(-2 * j.shift, 2 * j.shift)
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta, list(plain.shape), align_corners=False)
        out = F.grid_sample(plain, grid, padding_mode="border", align_corners=False)
        if j.brightness:
            out = out + uniform(-j.brightness, j.brightness).view(n, 1, 1, 1)
        return out.clamp_(0.0, 1.0).to(x.dtype).as_subclass(type(x))


def policy_name(augment: bool | str) -> str:
    """The policy an ``augment`` setting names: True means ``fastai``, False ``none``."""
    return {True: "fastai", False: "none"}.get(augment, augment)  # type: ignore[arg-type]


def batch_augmentations(policy: str) -> list[Transform]:
    """The batch transforms of a policy (an empty list for ``none``)."""
    if policy == "fastai":
        quiet_fastai_import()
        from fastai.vision.augment import aug_transforms

        return list(aug_transforms())
    if policy == "affine":
        return [SmallAffine()]
    if policy == "none":
        return []
    raise TwinnetError(f"augmentation must be one of {', '.join(AUG_POLICIES)}, got {policy!r}")
