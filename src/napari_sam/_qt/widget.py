"""``SamWidget``: the "Segment Anything" dock widget. Wiring only: ``widget.sam`` does the work.

Keys (on the "SAM points" and "SAM boxes" layers): **C** commit, **N** next candidate mask,
**Shift+C** clear prompts. Mouse (points layer, add mode): click = positive point,
Shift+click or right click = negative point. Draw rectangles in "SAM boxes" for box prompts.
"""

from __future__ import annotations

import weakref
from typing import Any

from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_sam._qt._encoder import EncodeRunner
from napari_sam._qt._everything_panel import EverythingPanel
from napari_sam._qt._jobs import JobRunner, spin
from napari_sam._qt._layer_combo import LayerCombo
from napari_sam._qt._model_box import ModelBox
from napari_sam._qt._volume_panel import VolumePanel
from napari_sam.errors import SamUserError
from napari_sam.viewer.prompts import PREVIEW_NAME
from napari_sam.viewer.segment_anything import SegmentAnything

HELP = (  # explicit lines, no word wrap: a wrapped label is squeezed when the dock runs out of height
    "click: positive point · Shift+click / right click: negative point\n"
    "more clicks refine the mask · rectangle in 'SAM boxes': box prompt\n"
    "(several boxes: several objects) · C: commit · N: next mask\n"
    "Shift+C: clear prompts"
)
COMBO_CHARS = 18  # characters a layer or model list shows before eliding (its popup shows whole names)
KEYS = {"c": "commit", "n": "next_mask", "Shift-C": "clear"}


ZOOM_TIP = (
    "Images (and stack slices) smaller than the model's input (512 px for nano_nuclei, 1024 for SAM) are "
    "embedded scaled by this and zero-padded, not enlarged to fill the input: objects keep the size the "
    "model was trained on. 1: their own pixel scale; 'fill the input': SAM's resize. Default: the model's."
)

class SamWidget(QWidget):
    """Dock widget: model, device, image, output labels, prompts, commit. ``add_section`` for more panels."""

    def __init__(self, napari_viewer: Any, load_default: bool = True, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.sam = SegmentAnything(napari_viewer)
        self.encoder = EncodeRunner(self.sam)
        self.setLayout(QVBoxLayout())
        self.layout().setContentsMargins(4, 4, 4, 4)

        self.model_box = ModelBox(self.sam, lambda: None, load_default=load_default)
        self.add_section("Model", self.model_box)
        self.add_section("Layers", self._layers_panel())
        self.add_section("Prompts", self._prompts_panel())
        self.layout().addStretch(1)
        # long jobs (3D propagation, precompute, segment everything): one at a time, cancellable
        self.jobs = JobRunner(self)
        self.volume_panel = VolumePanel(self.sam, self.jobs)
        self.volume_box = self.add_section("Volume", self.volume_panel)
        self.everything_panel = EverythingPanel(self.sam, self.jobs)
        self.add_section("Segment everything", self.everything_panel)
        for combo in self.findChildren(QComboBox):  # long layer / model names elide instead of widening the dock
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(COMBO_CHARS)

        self.sam.events.image_layer.connect(self._on_sam_image)
        self.sam.events.labels_layer.connect(self._on_sam_labels)
        self.sam.events.preview.connect(self._on_preview)
        self.sam.events.embedding.connect(self._on_status)
        self.sam.events.model.connect(self._on_model_loaded)
        self._bound: list[Any] = []
        self._watched: Any = None  # weakref to the window whose closing shuts the workers down
        self.jobs.running.connect(self._watch_window)
        self._on_image_combo()

    # ------------------------------------------------------------------ layout
    def add_section(self, title: str, widget: QWidget) -> QGroupBox:
        """Append a titled panel (e.g. volume propagation, automatic masks) before the stretch."""
        box = QGroupBox(title)
        QVBoxLayout(box).addWidget(widget)
        layout = self.layout()
        stretch_at = layout.count() - 1 if layout.count() and layout.itemAt(layout.count() - 1).spacerItem() else layout.count()
        layout.insertWidget(stretch_at, box)
        return box

    def _layers_panel(self) -> QWidget:
        panel = QWidget()
        form = QFormLayout(panel)
        form.setContentsMargins(0, 0, 0, 0)
        self.image_combo = LayerCombo(self.viewer, Image, none_text="(choose an image)", auto_select=True)
        self.channel_combo = QComboBox()
        self.labels_combo = LayerCombo(
            self.viewer, Labels, none_text="new: SAM labels", exclude=lambda la: la.name == PREVIEW_NAME
        )
        self.prompt_info = QLabel("prompt layers: SAM points, SAM boxes")
        form.addRow("image", self.image_combo)
        form.addRow("channels", self.channel_combo)
        form.addRow("output labels", self.labels_combo)
        form.addRow(self.prompt_info)
        self.image_combo.currentIndexChanged.connect(self._on_image_combo)
        self.channel_combo.activated.connect(self._on_channel)
        self.labels_combo.currentIndexChanged.connect(self._on_labels_combo)
        return panel

    def _prompts_panel(self) -> QWidget:
        panel = QWidget()
        col = QVBoxLayout(panel)
        col.setContentsMargins(0, 0, 0, 0)
        help_label = QLabel(HELP)
        self.multimask_check = QCheckBox("three candidate masks on the first click (N cycles)")
        self.multimask_check.setChecked(self.sam.multimask)
        self.overwrite_check = QCheckBox("overwrite existing objects")
        self.tiled_check = QCheckBox("large images: tiles at full resolution")
        self.tiled_check.setToolTip(
            "Encode images larger than the model's input (512 px for nano_nuclei, 1024 for SAM) in "
            "overlapping tiles at their own resolution instead of shrinking them: small objects of "
            "large images get sharper masks; encoding takes one model run per tile. On by default for "
            "models that know their pixel scale (the nano models), off for SAM's."
        )
        self.tiled_check.setChecked(self.sam.tiled)
        self.zoom_spin = spin(self.sam.zoom or 0.0, 0.0, 8.0, 0.5, ZOOM_TIP)
        self.zoom_spin.setSpecialValueText("fill the input")
        self.zoom_spin.setPrefix("small images: zoom x")
        self.score_label = QLabel("")
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.next_button = QPushButton("Next mask (N)")
        self.commit_button = QPushButton("Commit (C)")
        self.clear_button = QPushButton("Clear prompts (Shift+C)")
        row = QHBoxLayout()
        for b in (self.next_button, self.commit_button, self.clear_button):
            row.addWidget(b)
        for w in (help_label, self.multimask_check, self.overwrite_check, self.tiled_check, self.zoom_spin,
                  self.score_label):
            col.addWidget(w)
        col.addLayout(row)
        col.addWidget(self.status_label)
        self.multimask_check.toggled.connect(self._on_multimask)
        self.overwrite_check.toggled.connect(lambda on: setattr(self.sam, "overwrite", bool(on)))
        self.tiled_check.toggled.connect(self._on_tiled)
        self.zoom_spin.valueChanged.connect(self._on_zoom)
        self.next_button.clicked.connect(self.next_mask)
        self.commit_button.clicked.connect(self.commit)
        self.clear_button.clicked.connect(self.clear)
        return panel

    # ------------------------------------------------------------------ actions (buttons and keys)
    def commit(self) -> list[int]:
        """Commit the preview as new object(s); errors become notifications."""
        try:
            ids = self.sam.commit()
        except SamUserError as exc:
            show_warning(str(exc))
            return []
        self._set_status(f"committed object(s) {ids}" if ids else "nothing new to commit (all pixels taken)")
        return ids

    def next_mask(self) -> None:
        """Show SAM's next candidate mask with its IoU score."""
        self.sam.cycle_mask()

    def clear(self) -> None:
        """Remove all prompts and the preview."""
        self.sam.clear_prompts()
        self.sam.clear_preview()
        self.score_label.setText("")

    def _bind_keys(self) -> None:
        for layer in (self.sam.points_layer, self.sam.boxes_layer):
            if layer is None or any(layer is b for b in self._bound):
                continue
            for key, action in KEYS.items():
                layer.bind_key(key, lambda _layer, a=action: getattr(self, a)(), overwrite=True)
            self._bound.append(layer)

    # ------------------------------------------------------------------ event handlers
    def _on_model_loaded(self, event: Any = None) -> None:
        jobs = getattr(self, "jobs", None)
        if jobs is not None and jobs.busy and not jobs.cancel_event.is_set():
            jobs.cancel()  # its result was made with the previous model
            show_warning(f"SAM: the model changed while {jobs.name!r} ran: it is cancelled (a 3D run keeps the "
                         "whole slices already finished, other jobs write nothing); run it again with the new model")
        self.everything_panel.use_model_thresholds()
        self.volume_panel.use_model_rules()
        # the new model's defaults (unless the user chose): zoom of small images, tiles of large ones
        self.zoom_spin.blockSignals(True)
        self.zoom_spin.setValue(self.sam.zoom or 0.0)
        self.zoom_spin.blockSignals(False)
        self.tiled_check.blockSignals(True)
        self.tiled_check.setChecked(self.sam.tiled)
        self.tiled_check.blockSignals(False)
        self.encoder.request()
        self._on_status()

    def _on_image_combo(self, *_: Any) -> None:
        layer = self.image_combo.current_layer()
        try:
            self.sam.set_image_layer(layer)
        except SamUserError as exc:
            show_error(str(exc))
            return
        self._fill_channels()
        if getattr(self, "volume_box", None) is not None:
            self.volume_box.setEnabled(layer is not None and layer.ndim - int(layer.rgb) >= 3)
        if layer is not None:
            self._bind_keys()
            self._watch_window()
            self.encoder.request()
            # napari makes a newly added layer active after its `inserted` event: take it back after
            QTimer.singleShot(0, self._activate_points)
        self._on_status()

    def _activate_points(self) -> None:
        layers, pts = self.viewer.layers, self.sam.points_layer
        if pts is not None and pts in layers:
            layers.selection.active = pts

    def _fill_channels(self) -> None:
        self.channel_combo.clear()
        self.channel_combo.addItem("slice on screen", None)
        img = self.sam.image_layer
        if img is not None and not img.rgb:
            for axis, size in enumerate(img.data.shape[:-2]):
                if 2 <= size <= 4:
                    self.channel_combo.addItem(f"RGB composite of axis {axis} ({size} channels)", axis)
        self.channel_combo.setEnabled(self.channel_combo.count() > 1)

    def _on_channel(self, i: int) -> None:
        self.sam.channel_axis = self.channel_combo.itemData(i)
        self.sam.clear_preview()
        self.encoder.request()

    def _on_labels_combo(self, *_: Any) -> None:
        self.sam.labels_layer = self.labels_combo.current_layer()

    def _on_sam_image(self, event: Any = None) -> None:
        self._stop_job()
        try:
            self.image_combo.set_layer(self.sam.image_layer)
        except RuntimeError:
            pass

    def _on_sam_labels(self, event: Any = None) -> None:
        if getattr(event, "value", None) is None:  # removed or let go (not: created by a commit)
            self._stop_job()
        try:
            self.labels_combo.set_layer(self.sam.existing_labels_layer)
        except RuntimeError:
            pass

    def _stop_job(self) -> None:
        """The image or output layer changed (removed, replaced): a running job's result has nowhere to
        go, so it is cancelled; its apply step then says why and writes nothing (``LabelWriter.guard``)."""
        jobs = getattr(self, "jobs", None)
        if jobs is not None and jobs.busy:
            jobs.cancel()

    def _on_multimask(self, on: bool) -> None:
        self.sam.multimask = bool(on)
        self.sam.update_preview()

    def _on_zoom(self, value: float) -> None:
        self.sam.zoom = float(value) or None  # 0: fill the input; forgets embeddings and stores
        self.encoder.request()
        self._on_status()

    def _on_tiled(self, on: bool) -> None:
        self.sam.tiled = bool(on)  # forgets the embeddings and the preview: encode again
        self.encoder.request()
        self._on_status()

    def _on_preview(self, event: Any = None) -> None:
        sam = self.sam
        try:
            if sam.candidates is not None and len(sam.candidates) > 1:
                text = f"mask {sam.candidate + 1}/{len(sam.candidates)} · IoU {float(sam.scores[sam.candidate]):.3f}"
            elif sam.scores is not None:
                text = "IoU " + ", ".join(f"{float(s):.3f}" for s in sam.scores)
            else:
                text = ""
            self.score_label.setText(text)
        except RuntimeError:
            pass

    def _on_status(self, event: Any = None) -> None:
        self._watch_window()  # docked by now, if it ever is (slice changes encode without a combo change)
        sam = self.sam
        if sam.image_layer is None:
            self._set_status("choose an image layer")
        elif sam.predictor is None:
            self._set_status("choose a model")
        else:
            self._set_status(f"{len(sam.cache)} slice embedding(s) cached" + (" · encoding ..." if self.encoder.busy else ""))

    def _set_status(self, text: str) -> None:
        try:
            self.status_label.setText(text)
        except RuntimeError:
            pass

    # ------------------------------------------------------------------ closing
    def _watch_window(self, *_: Any) -> None:
        """Watch the window the widget sits in (napari's main window once docked): when it closes, so
        do the workers. Called whenever work starts, since docking happens after construction."""
        try:
            top = self.window()
        except RuntimeError:  # the widget's Qt object is gone (viewer closed)
            return
        old = self._watched() if self._watched is not None else None
        if top is self or top is old:
            return
        if old is not None:
            old.removeEventFilter(self)
        top.installEventFilter(self)
        self._watched = weakref.ref(top)  # no strong reference: the viewer must stay collectable

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt)
        if event.type() == QEvent.Type.Close and self._watched is not None and obj is self._watched():
            self.shutdown()
        return False

    def shutdown(self) -> None:
        """The viewer closes: cancel the running job, stop encoding and drop every result still to
        come (no layer is written, no notification shown). Never waits: the threads end on their
        own, and before the interpreter does (``_threads``)."""
        self.encoder.close()
        self.jobs.close()
        self.model_box.close_worker()

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt)
        self.shutdown()
        super().closeEvent(event)
