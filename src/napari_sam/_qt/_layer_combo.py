"""A QComboBox listing the viewer's layers of one type, kept in sync with the layer list."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtWidgets import QComboBox, QWidget


class LayerCombo(QComboBox):
    """Layers of ``layer_type`` (minus ``exclude(layer)``), with an optional first ``none_text`` item.

    ``current_layer()`` returns the chosen layer or None; ``layer_changed`` is ``currentIndexChanged``.
    Renaming or removing layers refreshes the list without emitting a change unless the chosen layer
    disappeared.
    """

    def __init__(
        self, viewer: Any, layer_type: type, none_text: str | None = None,
        exclude: Callable[[Any], bool] | None = None, auto_select: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.auto_select = auto_select  # pick the first matching layer while none is chosen
        self.viewer, self.layer_type, self.none_text = viewer, layer_type, none_text
        self.exclude = exclude or (lambda layer: False)
        self._layers: list[Any] = []
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)
        viewer.layers.events.reordered.connect(self._on_layers_changed)
        self.refresh()

    def _on_layers_changed(self, event: Any = None) -> None:
        value = getattr(event, "value", None)
        if value is not None and hasattr(value, "events") and event.type == "inserted":
            value.events.name.connect(self._on_layers_changed)
        try:
            self.refresh()
        except RuntimeError:  # the Qt widget is gone (viewer closed)
            pass

    def refresh(self) -> None:
        """Rebuild the items, keeping the current layer selected when it still exists."""
        previous = current = self.current_layer()
        layers = [la for la in self.viewer.layers if isinstance(la, self.layer_type) and not self.exclude(la)]
        self.blockSignals(True)
        self.clear()
        self._layers = ([None] if self.none_text is not None else []) + layers
        if self.none_text is not None:
            self.addItem(self.none_text)
        for la in layers:
            self.addItem(la.name)
        if current is None and self.auto_select and layers:
            current = layers[-1]  # the top-most (usually the newest) layer
        idx = self._layers.index(current) if current in self._layers else (0 if self._layers else -1)
        self.setCurrentIndex(idx)
        self.blockSignals(False)
        if self.current_layer() is not previous:
            self.currentIndexChanged.emit(self.currentIndex())

    def current_layer(self) -> Any | None:
        i = self.currentIndex()
        return self._layers[i] if 0 <= i < len(self._layers) else None

    def set_layer(self, layer: Any | None) -> None:
        """Select ``layer`` (None: the ``none_text`` item) without emitting a change."""
        if layer not in self._layers:
            self.refresh()
        if layer in self._layers:
            self.blockSignals(True)
            self.setCurrentIndex(self._layers.index(layer))
            self.blockSignals(False)
