"""When an object carried through a stack stops: the per-slice stop rules of ``segment_volume``.

Each step of an object's track (one slice further from its keyframe, in one direction) is measured
(:class:`Step`) and checked against :class:`StopRules`; the first rule that fails ends the track
there, and the failing slice is dropped. ``DEFAULT_RULES`` are ``segment_volume``'s defaults, the one
place they are set (the widget reads them from there); docs/volume.md gives the measurements behind
them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Step", "StopRules", "DEFAULT_RULES"]


@dataclass(frozen=True)
class Step:
    """What one propagation step measured (also kept in ``VolumeResult.trace``)."""

    z: int  # slice
    distance: int  # slices from the keyframe
    area: int  # pixels of the new mask
    score: float  # the decoder's predicted IoU
    stability: float  # area(logits > 1) / area(logits > -1), on the low-res logits
    overlap: float  # IoU with the previous slice's mask
    largest: int  # the largest area of this track so far (keyframe included), before this step

    @property
    def radius(self) -> float:
        """The radius of a disk as large as the track's largest slice so far, in pixels."""
        return float(np.sqrt(self.largest / np.pi))

    @property
    def growth(self) -> float:
        """Area against the track's largest slice so far (1: as large)."""
        return self.area / max(1, self.largest)


@dataclass(frozen=True)
class StopRules:
    """Stop criteria; a rule set to None (or 0 for the thresholds) never stops.

    - ``min_area``: the mask has fewer pixels ("vanished");
    - ``iou_threshold``: the predicted IoU is below it ("score");
    - ``stability_threshold``: the stability is below it ("stability");
    - ``overlap_threshold``: the IoU with the previous slice's mask is below it ("overlap");
    - ``max_growth``: the mask is more than this many times the area of the object's largest slice so
      far ("growth": it spilled into a neighbour or the background);
    - ``min_fraction``: the mask is less than this fraction of the object's largest slice so far
      ("shrunk": the object's cap, or a fragment of something else);
    - ``max_extent``: the slice is further from the keyframe than this many times the radius
      (``sqrt(area / pi)``, in pixels) of the object's largest slice so far ("extent"): a roundish
      object seeded near its middle ends within about its radius; 0.8 was measured on GoNuclear
      (docs/volume.md); None for time series or objects long along the stack axis;
    - ``max_distance``: the slice is more than this many slices from the keyframe ("distance").
    """

    min_area: int = 4
    iou_threshold: float = 0.3
    stability_threshold: float = 0.0
    overlap_threshold: float = 0.3
    max_growth: float | None = None
    min_fraction: float | None = None
    max_extent: float | None = 0.8
    max_distance: int | None = None

    def reason(self, s: Step) -> str:
        """The name of the first rule ``s`` fails, or "" when the object goes on."""
        checks = (
            ("vanished", s.area < max(self.min_area, 1)),
            ("score", s.score < self.iou_threshold),
            ("stability", s.stability < self.stability_threshold),
            ("overlap", s.overlap < self.overlap_threshold),
            ("growth", self.max_growth is not None and s.growth > self.max_growth),
            ("shrunk", self.min_fraction is not None and s.growth < self.min_fraction),
            ("extent", self.max_extent is not None and s.distance > self.max_extent * s.radius),
            ("distance", self.max_distance is not None and s.distance > self.max_distance),
        )
        return next((name for name, failed in checks if failed), "")

    def first_stop(self, steps: list[Step]) -> int:
        """How many of ``steps`` (one track, in order) are kept: the index of the first that fails."""
        return next((i for i, s in enumerate(steps) if self.reason(s)), len(steps))


DEFAULT_RULES = StopRules()


def stability(logits: np.ndarray, offset: float = 1.0) -> np.ndarray:
    """(B, h, w) logits -> (B,) area(> offset) / area(> -offset)."""
    hi = (logits > offset).sum(axis=(-2, -1))
    lo = (logits > -offset).sum(axis=(-2, -1))
    return np.where(lo > 0, hi / np.maximum(lo, 1), 0.0)
