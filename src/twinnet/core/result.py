"""The answer to "are these two images the same?", shared by every backend.

Kept free of torch so HTTP and SageMaker clients (and the app) can use it without
loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from twinnet.core.calibration import sigmoid

__all__ = ["CompareResult", "Hit"]


@dataclass
class CompareResult:
    """One pair's verdict.

    Attributes:
        same: ``probability >= threshold``.
        probability: softmax probability of "same" (logit index 1).
        logits: the head's two logits, ``[different, same]``.
        threshold: the model's decision threshold.
        model: the model's name.
        cam_left: Grad-CAM map of the left image at encoder resolution, when asked for.
        cam_right: Grad-CAM map of the right image, when asked for.
    """

    same: bool
    probability: float
    logits: tuple[float, float]
    threshold: float = 0.5
    model: str = "twin"
    cam_left: np.ndarray | None = field(default=None, repr=False)
    cam_right: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_logits(
        cls,
        logits: tuple[float, float] | list[float],
        threshold: float = 0.5,
        model: str = "twin",
        cam_left: np.ndarray | None = None,
        cam_right: np.ndarray | None = None,
    ) -> CompareResult:
        """Build the verdict from two logits: p(same) = softmax(logits)[1]."""
        neg, pos = float(logits[0]), float(logits[1])
        probability = float(sigmoid(pos - neg))
        return cls(
            same=probability >= threshold,
            probability=probability,
            logits=(neg, pos),
            threshold=float(threshold),
            model=model,
            cam_left=cam_left,
            cam_right=cam_right,
        )

    @property
    def verdict(self) -> str:
        """``"Same"`` or ``"Different"``."""
        return "Same" if self.same else "Different"

    @property
    def has_cam(self) -> bool:
        return self.cam_left is not None and self.cam_right is not None

    def to_dict(self) -> dict[str, Any]:
        """The HTTP contract's JSON object; ``cam`` only when the maps are present."""
        out: dict[str, Any] = {
            "same": bool(self.same),
            "probability": float(self.probability),
            "logits": [float(v) for v in self.logits],
            "threshold": float(self.threshold),
            "model": self.model,
        }
        if self.has_cam:
            out["cam"] = {
                "left": np.asarray(self.cam_left, dtype=float).tolist(),
                "right": np.asarray(self.cam_right, dtype=float).tolist(),
            }
        return out

    def to_list(self) -> list[Any]:
        """The original sample's flat list ``[neg, pos, *cam_left_rows, *cam_right_rows]``."""
        out: list[Any] = [float(v) for v in self.logits]
        if self.has_cam:
            out += np.asarray(self.cam_left, dtype=float).tolist()
            out += np.asarray(self.cam_right, dtype=float).tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompareResult:
        """Parse the contract's JSON object (as returned by a server); raises ValueError if malformed."""
        try:
            logits = [float(v) for v in data["logits"]]
            if len(logits) != 2:
                raise ValueError("logits must hold two numbers")
            cam = data.get("cam")
            cam_left = np.asarray(cam["left"], dtype=np.float32) if cam else None
            cam_right = np.asarray(cam["right"], dtype=np.float32) if cam else None
            return cls(
                same=bool(data["same"]),
                probability=float(data["probability"]),
                logits=(logits[0], logits[1]),
                threshold=float(data.get("threshold", 0.5)),
                model=str(data.get("model", "twin")),
                cam_left=cam_left,
                cam_right=cam_right,
            )
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"malformed response: {exc!r}") from None


@dataclass(frozen=True)
class Hit:
    """One gallery image ranked by :meth:`twinnet.infer.twin.Twin.search`.

    Attributes:
        index: position in the gallery (in :func:`~twinnet.data.items.list_images` order for a folder).
        item: the gallery entry itself (a path for a folder).
        probability: probability that it shows the same class as the query.
    """

    index: int
    item: Any
    probability: float
