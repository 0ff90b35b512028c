"""The prompt and preview layers of ``SegmentAnything`` ("SAM points", "SAM boxes", "SAM preview").

Points carry a ``label`` feature, ``"positive"`` (green) or ``"negative"`` (red). In the points
layer's add mode a plain left click adds a positive point; **Shift+click** or a **right click** adds
a negative one (Shift only modifies the selection in napari's *select* mode, so nothing clashes).
Rectangles in the boxes layer are box prompts (any other shape counts by its bounding box).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from napari.layers import Labels, Points, Shapes
from napari.utils.notifications import show_warning

from napari_sam.errors import SamUserError
from napari_sam.viewer.image_source import ImageSource
from napari_sam.viewer.slicing import in_slice, spatial_shape, to_image_data

POINTS_NAME, BOXES_NAME, PREVIEW_NAME = "SAM points", "SAM boxes", "SAM preview"
POINT_COLORS = {"positive": "lime", "negative": "red"}
_PAST = {"added", "removed", "changed"}


def _action(event: Any) -> str | None:
    action = getattr(event, "action", None)
    return None if action is None else str(getattr(action, "value", action))


class PromptLayers:
    """The points, boxes and preview layers of the image in ``images``.

    Args:
        viewer: the napari viewer the layers are added to.
        images: the image being segmented (the layers take its ndim, scale and translate).
        on_change: called (no arguments) after the user adds, moves or removes a prompt.
    """

    def __init__(self, viewer: Any, images: ImageSource, on_change: Callable[[], Any] | None = None) -> None:
        self.viewer = viewer
        self.images = images
        self.on_change = on_change
        self.points_layer: Points | None = None
        self.boxes_layer: Shapes | None = None
        self.preview_layer: Labels | None = None

    # ------------------------------------------------------------------ creation
    def ensure_prompt_layers(self) -> None:
        """Create (or re-create for a different ndim) the points and boxes layers for the image."""
        img = self.images.layer
        nd = img.ndim
        kw = {"scale": img.scale, "translate": img.translate}
        if self.points_layer is None or self.points_layer.ndim != nd:
            self._drop(self.points_layer)
            feats = pd.DataFrame({"label": pd.Categorical([], categories=list(POINT_COLORS))})
            self.points_layer = self.viewer.add_points(
                np.empty((0, nd)), ndim=nd, name=POINTS_NAME, features=feats,
                feature_defaults={"label": "positive"}, face_color="label",
                face_color_cycle=dict(POINT_COLORS), border_color="white", size=max(3.0, min(spatial_shape(img)[-2:]) / 60),
                **kw,
            )
            self.points_layer.mouse_drag_callbacks.insert(0, _on_point_press)
            self.points_layer.events.data.connect(self._on_points_data)
        if self.boxes_layer is None or self.boxes_layer.ndim != nd:
            self._drop(self.boxes_layer)
            self.boxes_layer = self.viewer.add_shapes(
                ndim=nd, name=BOXES_NAME, edge_color="yellow", face_color="transparent", edge_width=2 * float(np.min(img.scale[-2:])), **kw,
            )
            self.boxes_layer.events.data.connect(self._on_prompts_data)
        self.set_preview(None)
        self.raise_prompt_layers()
        self.points_layer.mode = "add"
        self.boxes_layer.mode = "add_rectangle"

    def _drop(self, layer: Any) -> None:
        """Forget a prompt layer that no longer fits (it is removed if it holds no prompts)."""
        if layer is not None and layer in self.viewer.layers and len(layer.data) == 0:
            self.viewer.layers.remove(layer)

    def raise_prompt_layers(self) -> None:
        """Move preview, boxes and points to the top and make the points layer active."""
        layers = self.viewer.layers
        for layer in (self.preview_layer, self.boxes_layer, self.points_layer):
            if layer is not None and layer in layers:
                layers.move(layers.index(layer), len(layers))
        if self.points_layer is not None and self.points_layer in layers:
            layers.selection.active = self.points_layer

    def set_preview(self, ids: np.ndarray | None) -> None:
        """Show (H, W) object ids (0 = none) in the preview layer; None clears it."""
        img = self.images.layer
        layer = self.preview_layer
        if ids is None:
            if layer is not None and layer in self.viewer.layers and layer.data.any():
                layer.data[...] = 0
                layer.refresh()
            return
        if img is None:
            return
        if layer is None or layer not in self.viewer.layers or layer.data.shape != ids.shape or layer.data.dtype != ids.dtype:
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
            active = self.viewer.layers.selection.active
            self.preview_layer = self.viewer.add_labels(
                ids, name=PREVIEW_NAME, opacity=0.55, scale=img.scale[-2:], translate=img.translate[-2:],
            )
            self.raise_prompt_layers()
            if active is not None and active in self.viewer.layers:
                self.viewer.layers.selection.active = active
        else:
            # in place: assigning a new array makes napari re-check the dims of every layer
            # (~17 ms a click at 1024x1024); same shape, so a refresh of this layer suffices
            layer.data[...] = ids
            layer.refresh()

    def forget_layer(self, layer: Any) -> None:
        """Drop references to a layer removed from the viewer."""
        for attr in ("points_layer", "boxes_layer", "preview_layer"):
            if getattr(self, attr) is layer:
                setattr(self, attr, None)

    # ------------------------------------------------------------------ reading prompts
    def read_prompts(self, index: tuple[int, ...]) -> tuple[np.ndarray | None, np.ndarray | None, list[np.ndarray]]:
        """Prompts of slice ``index`` in image data (row, col): (points (N, 2), labels (N,), boxes [(K, 2)])."""
        img = self.images.layer
        points_rc = labels = None
        boxes: list[np.ndarray] = []
        p = self.points_layer
        if p is not None and len(p.data):
            _check_ndim(p, img)
            coords = to_image_data(p, p.data, img)
            sel = in_slice(coords, index)
            if "label" in p.features:
                lab = np.asarray(p.features["label"].astype(str))
            else:
                lab = np.full(len(coords), "positive")
            points_rc, labels = coords[sel][:, -2:], (lab[sel] != "negative").astype(np.float32)
        s = self.boxes_layer
        if s is not None and s.nshapes:
            _check_ndim(s, img)
            for verts in s.data:
                coords = to_image_data(s, verts, img)
                if in_slice(coords[:1], index)[0]:
                    boxes.append(coords[:, -2:])
        return points_rc, labels, boxes

    def clear_prompts(self) -> None:
        """Remove every point and box (without re-running the decoder)."""
        p, s = self.points_layer, self.boxes_layer
        if p is not None and len(p.data):
            with p.events.data.blocker():
                p.data = np.empty((0, p.ndim))
            p.refresh()
        if s is not None and s.nshapes:
            with s.events.data.blocker():
                s.selected_data = set(range(s.nshapes))
                s.remove_selected()
        self.set_preview(None)

    def add_point(self, coords: Any, positive: bool = True) -> None:
        """Add a prompt point at napari data coordinates of the points layer."""
        p = self.points_layer
        if p is None:
            raise SamUserError("choose an image layer first")
        p.feature_defaults = {"label": "positive" if positive else "negative"}
        p.add(np.asarray(coords, dtype=float).reshape(1, -1))

    # ------------------------------------------------------------------ events
    def _on_points_data(self, event: Any) -> None:
        if _action(event) in _PAST | {None}:
            layer = event.source if isinstance(event.source, Points) else self.points_layer
            if layer is not None and str(layer.feature_defaults["label"].iloc[0]) != "positive":
                layer.feature_defaults = {"label": "positive"}
        self._on_prompts_data(event)

    def _on_prompts_data(self, event: Any) -> None:
        if _action(event) in _PAST | {None} and self.on_change is not None:
            self.on_change()


def _on_point_press(layer: Points, event: Any) -> None:
    """Before napari's add-mode callback: Shift+click or right click makes the next point negative."""
    if str(layer.mode) != "add":
        return
    negative = event.button == 2 or "Shift" in event.modifiers
    layer.feature_defaults = {"label": "negative" if negative else "positive"}


def _check_ndim(layer: Any, img: Any) -> None:
    if layer.ndim < img.ndim:
        raise SamUserError(
            f"the prompt layer {layer.name!r} is {layer.ndim}D but the image {img.name!r} is {img.ndim}D: "
            f"prompts need a coordinate for every image axis (use the layers the SAM widget creates)"
        )


def index_from_coords(
    arrays: list[np.ndarray], nlead: int, index: tuple[int, ...] | None, current: Callable[[], tuple[int, ...]]
) -> tuple[int, ...]:
    """The slice of prompts given as (N, 2) or (N, nlead + 2) arrays (leading coords must agree)."""
    for a in arrays:
        if a.ndim != 2 or a.shape[1] not in (2, nlead + 2):
            raise SamUserError(f"prompts need 2 or {nlead + 2} coordinates per row, got shape {a.shape}")
    if index is not None:
        return tuple(int(i) for i in index)
    lead = [np.round(a[:, :nlead]) for a in arrays if nlead and a.shape[1] == nlead + 2]
    if not lead:
        return current() if nlead else ()
    rows = np.unique(np.concatenate(lead), axis=0)
    if len(rows) != 1:
        raise SamUserError(f"prompts lie on several slices {rows.astype(int).tolist()}; give one slice at a time")
    return tuple(int(v) for v in rows[0])


def assign_points_to_boxes(
    pts: np.ndarray | None, labels: np.ndarray | None, boxes: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Points (N, 2) xy to the first of boxes (B, 4) xyxy containing them -> (B, M, 2), (B, M) padded with -1."""
    if pts is None or len(pts) == 0:
        return None, None
    inside = (
        (pts[:, None, 0] >= boxes[None, :, 0]) & (pts[:, None, 0] <= boxes[None, :, 2])
        & (pts[:, None, 1] >= boxes[None, :, 1]) & (pts[:, None, 1] <= boxes[None, :, 3])
    )
    owner = np.where(inside.any(axis=1), inside.argmax(axis=1), -1)
    if (owner < 0).any():
        show_warning(f"SAM: {int((owner < 0).sum())} point(s) outside every box were ignored")
    counts = np.bincount(owner[owner >= 0], minlength=len(boxes))
    m = int(counts.max()) if counts.size else 0
    if m == 0:
        return None, None
    coords = np.zeros((len(boxes), m, 2), dtype=np.float32)
    labs = np.full((len(boxes), m), -1.0, dtype=np.float32)
    fill = np.zeros(len(boxes), dtype=int)
    for i, b in enumerate(owner):
        if b >= 0:
            coords[b, fill[b]], labs[b, fill[b]] = pts[i], labels[i]
            fill[b] += 1
    return coords, labs
