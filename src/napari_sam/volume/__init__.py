"""Volume: stacks and time series. The embedding store (per-slice embeddings under a memory budget,
with a zarr disk cache), propagation of prompts through slices, and the prompts and results of it.

May import ``engine``, ``models`` and ``errors``; never napari or Qt. Nothing is imported here:
import the modules themselves.
"""
