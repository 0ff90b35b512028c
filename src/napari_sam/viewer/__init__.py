"""Viewer: the napari-facing layer, without Qt. ``SegmentAnything`` (``viewer.segment_anything``) turns
prompt layers into labels on a napari viewer, with the slicing and (row, col) <-> (x, y) geometry, the
prompt layers, slice embeddings, stack writes, and the volume and automatic actions; it is also the
console API. The sample data lives here too.

May import napari and every non-Qt layer (``engine``, ``weights``, ``volume``, ``automatic``,
``errors``); never Qt (``_qt`` imports this layer, not the reverse). Nothing is imported here.
"""
