"""Engine: one image at a time. Image conversion (gray, RGB, uint16, float, channels), the predictor
(embedding, prompts to masks), pre- and post-processing, tiles, device choice, and the one
progress/cancel contract (``engine.progress``) that all long work uses.

May import ``models`` and ``errors``; never napari or Qt (it runs in a plain process, on a dask worker,
on a GPU machine). Nothing is imported here: import the modules themselves.
"""
