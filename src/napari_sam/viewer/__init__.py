"""Viewer: the napari-facing layer, without Qt. ``SegmentAnything`` (``viewer.segment_anything``) turns
prompt layers into labels on a napari viewer; it is the console API and a façade over plain parts, each
in its own module: ``image_source`` (the image layer and the slice on screen), ``model_slot`` (the model
and its predictors), ``embeddings`` (slice embeddings), ``stores`` (stack embeddings), ``prompts`` (the
prompt and preview layers), ``preview`` (decoding), ``label_writer`` (the one place that writes labels),
``volume`` and ``everything`` (3D and automatic actions); ``slicing`` holds the (row, col) <-> (x, y)
geometry and ``stack`` the stacks the engines see. The sample data lives here too.

May import napari and every non-Qt layer (``engine``, ``weights``, ``volume``, ``automatic``,
``errors``); never Qt (``_qt`` imports this layer, not the reverse). Nothing is imported here.
"""
