"""The "Volume" section: carry prompted objects through a stack, extend labels, precompute embeddings.

Wiring only: ``widget.sam.volume_job`` / ``precompute_job`` do the work, ``JobRunner`` runs it.
Cancel: the slices finished so far are written (whole slices only, one undo step); a cancelled
precompute keeps the slices already encoded.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QHBoxLayout, QPushButton, QSpinBox, QWidget

from napari_sam._qt._jobs import JobPanel, JobRunner, labelled_grid, spin

HELP = (
    "Prompt the object on one slice (or several), then 'Segment object in 3D': it is carried slice by "
    "slice along the last slider axis (z, or t) and written as a new id. Several boxes = several objects."
)


class VolumePanel(JobPanel):
    """Buttons: Segment object in 3D, Extend labels in 3D, Precompute embeddings, Cancel."""

    def __init__(self, sam: Any, jobs: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(sam, jobs, parent)
        self.iou_spin = spin(0, 0, 1, 0.05, "stop when SAM's predicted IoU falls below this (0: never)")
        self.overlap_spin = spin(0, 0, 1, 0.05,
                                  "stop when the mask overlaps the previous slice's less than this (IoU; 0: never)")
        self.stability_spin = spin(0, 0, 1, 0.05, "stop below this stability score (0: never)")
        self.extent_spin = spin(0, 0, 10, 0.1,
                                "stop further from the prompted slice than this many times the object's radius "
                                "(0: off; switch it off for time series and objects long along the axis)")
        self.extent_spin.setSpecialValueText("off")
        self.distance_spin = QSpinBox()
        self.distance_spin.setRange(0, 100000)
        self.distance_spin.setSpecialValueText("all")
        self.distance_spin.setToolTip("stop this many slices away from a prompted slice (0: all slices)")
        self.use_model_rules()
        # "stop below ...": these end an object's run, unlike the Segment everything panel's "min IoU"
        # (which masks to keep); the two have different defaults, so they must not share a name
        grid = labelled_grid((("stop below IoU", self.iou_spin), ("stop below overlap", self.overlap_spin),
                              ("stop below stability", self.stability_spin), ("max slices", self.distance_spin),
                              ("max depth (x radius)", self.extent_spin)))
        self.segment_button = QPushButton("Segment object in 3D")
        self.segment_button.setToolTip(HELP)
        self.extend_button = QPushButton("Extend labels in 3D")
        self.extend_button.setToolTip("use the labels already in the stack as seeds: fill gaps, extend ends, keep ids")
        self.precompute_button = QPushButton("Precompute embeddings")
        self.precompute_button.setToolTip("encode every slice of the stack now (then 3D and slice changes are fast)")
        row = QHBoxLayout()
        for b in (self.segment_button, self.extend_button):
            row.addWidget(b)
        self.column.addLayout(grid)
        self.column.addLayout(row)
        self.column.addWidget(self.precompute_button)
        self.finish_layout()
        self.action_buttons = [self.segment_button, self.extend_button, self.precompute_button]
        self.segment_button.clicked.connect(self.segment_3d)
        self.extend_button.clicked.connect(self.extend_3d)
        self.precompute_button.clicked.connect(self.precompute)

    def use_model_rules(self) -> None:
        """Show the stop rules of ``sam.volume_params`` (the current model's; called when a model loads)."""
        p = self.sam.volume_params
        iou = p["iou_threshold"]
        self.iou_spin.setValue(0 if iou is None or iou == float("-inf") else iou)
        self.overlap_spin.setValue(p["overlap_threshold"] or 0)
        self.stability_spin.setValue(p["stability_threshold"] or 0)
        self.extent_spin.setValue(p["max_extent"] or 0)
        self.distance_spin.setValue(p["max_distance"] or 0)

    def params(self) -> dict[str, Any]:
        """The stop criteria set in the panel (``segment_volume`` keywords)."""
        return {
            "iou_threshold": self.iou_spin.value() or float("-inf"),  # 0: never (scores may be < 0)
            "overlap_threshold": self.overlap_spin.value(),
            "stability_threshold": self.stability_spin.value(),
            "max_distance": self.distance_spin.value() or None,
            "max_extent": self.extent_spin.value() or None,
        }

    def segment_3d(self) -> bool:
        """Propagate the prompted object(s) through the stack in the background."""
        return self.start("3D propagation", lambda: self.sam.volume_job(**self.params()), self._report)

    def extend_3d(self) -> bool:
        """Extend the existing labels of the stack in the background."""
        return self.start("extend labels in 3D",
                          lambda: self.sam.volume_job(extend_labels=True, **self.params()), self._report)

    def precompute(self) -> bool:
        """Encode every slice of the stack on screen in the background."""
        def make() -> tuple[Any, Any]:
            return self.sam.precompute_job(), lambda n: n
        return self.start("precompute embeddings", make, lambda n: f"encoded {n} slice(s)")

    def _report(self, ids: list[int] | None) -> str:
        res = self.sam.last_volume
        if res is None or ids is None:
            return ""
        done = f"object(s) {ids} on {len(res.slices)} slice(s)" if ids else "nothing new written"
        return done + (" · cancelled: finished slices kept" if res.cancelled else "")
