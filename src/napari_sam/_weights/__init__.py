"""Packaged model weights: ``nano_nuclei.pt``, ``nano_nuclei_v1.pt`` and ``lite_medsam_nuclei.pt``
(LiteMedSAM's fine-tuned prompt encoder and mask decoder), see docs/training.md."""
