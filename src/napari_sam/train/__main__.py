"""``python -m napari_sam.train`` (see :mod:`napari_sam.train.cli`)."""

from .cli import main

main()
