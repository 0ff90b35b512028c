"""The napari dock widget (Qt): wiring only, the work happens in ``napari_sam.viewer.segment_anything``."""

from napari_sam._qt.widget import SamWidget

__all__ = ["SamWidget"]
