"""The "Segment everything" section: automatic instance labels of the slice (or stack) on screen.

Wiring only: ``widget.sam.everything_job`` does the work. Cancel writes nothing.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QCheckBox, QPushButton, QSpinBox, QWidget

from napari_sam._qt._jobs import JobPanel, JobRunner, labelled_grid, spin


class EverythingPanel(JobPanel):
    """Points per side, predicted-IoU and stability thresholds, min region area, whole stack; Run, Cancel."""

    def __init__(self, sam: Any, jobs: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(sam, jobs, parent)
        self.points_spin = QSpinBox()
        self.points_spin.setRange(1, 128)
        self.points_spin.setValue(32)
        self.points_spin.setToolTip("grid of points_per_side x points_per_side prompts")
        self.iou_spin = spin(0.88, 0, 1, 0.01, "keep masks whose predicted IoU is above this (pred_iou_thresh)")
        self.stability_spin = spin(
            0.95, 0, 1, 0.01, "keep masks whose stability score is at least this (stability_score_thresh)"
        )
        self.area_spin = QSpinBox()
        self.area_spin.setRange(0, 10**7)
        self.area_spin.setToolTip("fill holes and remove islands smaller than this (pixels; 0: off)")
        self.stack_check = QCheckBox("whole stack (ids linked across slices)")
        grid = labelled_grid((("points/side", self.points_spin), ("min IoU", self.iou_spin),
                              ("min area", self.area_spin), ("min stability", self.stability_spin)))
        self.run_button = QPushButton("Segment everything")
        self.column.addLayout(grid)
        self.column.addWidget(self.stack_check)
        self.column.addWidget(self.run_button)
        self.finish_layout()
        self.action_buttons = [self.run_button]
        self.run_button.clicked.connect(self.run)

    def use_model_thresholds(self) -> None:
        """Set min IoU / min stability to the current model's defaults (called when a model loads)."""
        defaults = self.sam.automatic_defaults()
        self.iou_spin.setValue(defaults["pred_iou_thresh"])
        self.stability_spin.setValue(defaults["stability_score_thresh"])

    def params(self) -> dict[str, Any]:
        """``segment_everything`` keywords set in the panel."""
        return {
            "points_per_side": self.points_spin.value(),
            "pred_iou_thresh": self.iou_spin.value(),
            "stability_score_thresh": self.stability_spin.value(),
            "min_mask_region_area": self.area_spin.value(),
            "stack": self.stack_check.isChecked(),
        }

    def run(self) -> bool:
        """Segment everything in the background; new ids above the existing ones, one undo step."""
        return self.start("segment everything", lambda: self.sam.everything_job(**self.params()), self._report)

    def _report(self, ids: list[int] | None) -> str:
        if ids is None:
            return ""
        if ids:
            return f"{len(ids)} object(s) written"
        from napari.utils.notifications import show_warning

        show_warning(
            "Segment everything wrote nothing: it was cancelled, or no mask passed min IoU "
            f"{self.iou_spin.value():.2f} and min stability {self.stability_spin.value():.2f}. "
            "Lower them to find more objects."
        )
        return "nothing written (cancelled, or no mask passed the thresholds)"
