"""The current SAM model of ``SegmentAnything`` and the predictors on it.

``ModelSlot`` holds the model, its display name, the interactive predictor (a ``TiledPredictor``
around it when ``tiled``) and a background ``SamPredictor`` for worker threads, so a click decoded on
the GUI thread never races a propagation or automatic run in a worker. ``version`` changes with
every ``set``: embeddings and stack stores made with another version are stale.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from napari_sam.engine.predictor import SamPredictor
from napari_sam.engine.tiling import MAX_TILE_ENCODINGS, TiledPredictor
from napari_sam.engine.transforms import model_zoom
from napari_sam.errors import SamUserError
from napari_sam.weights.loading import load_model


class ModelSlot:
    """The model in use (None until ``set``), its predictors and the ``tiled`` option."""

    def __init__(self) -> None:
        self.model: Any = None
        self.name: str | None = None
        self.predictor: Any = None
        self.device: str | None = None
        self.version = 0
        self._tiled: bool | str = "model"  # "model": tiles for models that know their pixel scale
        self._max_tiles: int | None = MAX_TILE_ENCODINGS
        self._zoom: float | None | str = "model"  # SamPredictor's zoom: "model" = the model's own
        self._background: tuple[int, Any] | None = None
        self._busy, self._busy_with = threading.Lock(), ""

    @staticmethod
    def load(name_or_path: str | Path | None = None, device: str | None = None, progress: Any = None) -> Any:
        """Load a registry model or checkpoint file (may download; safe to run in a thread)."""
        return load_model(name_or_path, device=device, progress=progress)

    def set(self, model: Any, device: str | None = None) -> Any:
        """Use ``model`` (registry name, checkpoint path or ``Sam``); returns the ``Sam``."""
        if isinstance(model, str | Path):
            name = str(model)
            model = self.load(model, device=device or self.device)
        else:
            name = getattr(model, "model_name", None) or getattr(model, "arch", "custom model")
        predictor = SamPredictor(model, device=device or self.device, zoom=self._zoom)
        self.model, self.name = model, name  # before wrapping: tiles by default depend on the model
        self.predictor = self._wrap(predictor)
        self.device = str(self.predictor.device)
        self.version += 1
        return model

    @property
    def tiled(self) -> bool:
        """Whether the interactive predictor embeds large images in tiles (``TiledPredictor``). By
        default ("model") a model that embeds at its own pixel scale (``preprocessing.zoom`` set, e.g.
        the nano models) tiles images larger than its input, and one that fills its input (SAM's
        resize) shrinks them: the tiles were measured better for nano_nuclei (docs/tiling.md)."""
        if self._tiled == "model":
            return self.model is not None and model_zoom(self.model) is not None
        return bool(self._tiled)

    def set_tiled(self, on: bool | str) -> bool:
        """Switch tiles on, off, or back to the model's default ("model"); True when the interactive
        predictor changed (its embeddings are stale)."""
        if on != "model":
            on = bool(on)
        was = self.tiled
        self._tiled = on
        if self.predictor is None or self.tiled == was:
            return False
        # the same model (stack stores, made by the background predictor, stay valid), other embeddings
        self.predictor = self._wrap(getattr(self.predictor, "predictor", self.predictor))
        return True

    @property
    def zoom(self) -> float | None:
        """How images smaller than the model's input are embedded (``SamPredictor.zoom``): None
        enlarged to fill it, a number scaled by it (1: own pixel scale) and zero-padded."""
        if self.predictor is not None:
            return getattr(self.predictor, "predictor", self.predictor).zoom
        return None if self._zoom == "model" else self._zoom

    def set_zoom(self, zoom: float | None | str) -> bool:
        """Use ``zoom`` ("model": the model's default); True when the predictors changed (a new
        ``version``: embeddings and stack stores are stale)."""
        if zoom != "model" and zoom is not None and not float(zoom) > 0:
            raise SamUserError(f"zoom must be a positive number, None (fill the input) or 'model', not {zoom!r}")
        if zoom == self._zoom:
            return False
        self._zoom = zoom
        if self.predictor is None:
            return False
        inner = getattr(self.predictor, "predictor", self.predictor)
        self.predictor = self._wrap(SamPredictor(self.model, device=inner.device, precision=inner.precision, zoom=zoom))
        self.version += 1
        return True

    @property
    def tag(self) -> tuple[int, bool]:
        """What an interactive embedding is made with: (model version, tiled)."""
        return (self.version, self.tiled)

    def require(self) -> Any:
        """The interactive predictor; ``SamUserError`` when no model is loaded."""
        if self.predictor is None:
            raise SamUserError("no SAM model is loaded: choose a model or load a checkpoint file")
        return self.predictor

    def background_predictor(self) -> Any:
        """A ``SamPredictor`` on the current model for worker threads (shares the weights)."""
        predictor = self.require()
        if self._background is None or self._background[0] != self.version:
            inner = getattr(predictor, "predictor", predictor)
            bg = SamPredictor(self.model, device=predictor.device, precision=predictor.precision, zoom=inner.zoom)
            self._background = (self.version, bg)
        return self._background[1]

    @property
    def max_tile_encodings(self) -> int | None:
        """With tiles, images needing more encoder runs are refused (``TooMuchWorkError``); None: no limit."""
        return self._max_tiles

    @max_tile_encodings.setter
    def max_tile_encodings(self, n: int | None) -> None:
        self._max_tiles = None if n is None else int(n)
        if isinstance(self.predictor, TiledPredictor):
            self.predictor.max_encodings = self._max_tiles

    @contextmanager
    def exclusive(self, what: str) -> Iterator[None]:
        """Hold the background predictor for one long job (it keeps one image's embedding at a time):
        ``SamUserError`` at once, never a wait, when another job holds it (e.g. a console call while
        the widget's 3D run is in its worker thread)."""
        if not self._busy.acquire(blocking=False):
            raise SamUserError(
                f"SAM is busy with {self._busy_with!r} (another job on the same model): wait for it to finish "
                f"or cancel it, then run {what!r} again; nothing was written"
            )
        self._busy_with = what
        try:
            yield
        finally:
            self._busy.release()

    def _wrap(self, predictor: Any) -> Any:
        return TiledPredictor(predictor, max_encodings=self._max_tiles) if self.tiled else predictor
