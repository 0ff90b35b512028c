"""Packaged model weights (``nano_nuclei.pt``, see docs/training.md)."""
