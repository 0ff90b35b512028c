"""Automatic: segment everything. Point grids, batches of prompts, crops and tiles, filtering, NMS,
run-length encoding, and linking the masks of neighbouring slices into 3D labels.

May import ``engine``, ``models`` and ``errors``; never napari or Qt. Nothing is imported here:
import the modules themselves.
"""
