"""Training, evaluation and fine-tuning of SAM-architecture models (pure torch, no napari).

- :mod:`.data`: image + instance-label pairs (dsb2018 or any folders / tif stacks), preprocessing
  identical to inference, augmentation, 256x256 training windows.
- :mod:`.prompts`: prompt sampling (points, boxes, corrective clicks from the error region).
- :mod:`.losses`: focal + dice mask loss and the IoU-head MSE, as SAM.
- :mod:`.loop`: SAM's interactive training recipe, resumable checkpoints.
- :mod:`.tuning`: :func:`finetune` any registry model on your own images + Labels.
- :mod:`.evaluate`: 1-click / box / corrective-click IoU and NoC@85/90 for any model via the predictor.

Run ``python -m napari_sam.train --help``.
"""

from __future__ import annotations

__all__ = ["finetune", "evaluate_model"]


def __getattr__(name: str):
    if name == "finetune":
        from .tuning import finetune

        return finetune
    if name == "evaluate_model":
        from .evaluate import evaluate_model

        return evaluate_model
    raise AttributeError(name)
