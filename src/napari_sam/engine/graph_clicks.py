"""The predictor's clicks as CUDA graphs (``napari_sam.engine.graphs``): a click as one function of
tensors, its cache key, and the first click of an image captured ahead. A mixin of ``SamPredictor``
(it uses the predictor's ``model``, ``dense_pe``, ``device``, ``_graphs``, ``postprocess_masks`` and
``low_res_limit``)."""

from __future__ import annotations

from functools import partial

import torch

from napari_sam.engine.embedding import ImageEmbedding
from napari_sam.engine.model_interface import decode


class GraphClicks:
    """``_graph_call``, ``_click`` and ``_warm_first_click`` of ``SamPredictor``."""

    def _graph_call(self, emb: ImageEmbedding, inputs: tuple, multimask_output: bool, return_logits: bool):
        """The graph cache's key for a click and the function of its tensors it captures."""
        shapes = tuple(None if t is None else (tuple(t.shape), t.dtype) for t in inputs)
        key = (shapes, multimask_output, return_logits, tuple(emb.input_size), tuple(emb.original_size))
        fn = partial(self._click, tuple(emb.input_size), tuple(emb.original_size), multimask_output, return_logits)
        return key, fn

    def _click(self, input_size, original_size, multimask_output, return_logits, features, hr0, hr1, coords, labels, boxes, masks):
        """Prompts -> ``(low-res logits, IoUs, masks)`` with the plain modules: the click as one
        function of tensors, as a CUDA graph holds it."""
        points = (coords, labels) if coords is not None else None
        high_res = None if hr0 is None else (hr0, hr1)
        low_res, iou = decode(self.model, features, self.dense_pe, points, boxes, masks, multimask_output, high_res)
        masks = self.postprocess_masks(low_res, input_size, original_size, return_logits)
        if self.low_res_limit is not None:
            low_res = low_res.clamp(-self.low_res_limit, self.low_res_limit)
        return low_res, iou, masks

    def _warm_first_click(self, emb: ImageEmbedding) -> None:
        """Capture the CUDA graph of a first click on ``emb`` (one point, multimask, bool masks)
        now, so that the user's first click replays it (nothing without graphs)."""
        if self._graphs is None:
            return
        features = emb.features.to(self.device)
        coords = torch.zeros(1, 1, 2, device=self.device)
        labels = torch.ones(1, 1, dtype=torch.int, device=self.device)
        high_res = flat_high_res(None if emb.high_res is None else tuple(t.to(self.device) for t in emb.high_res))
        inputs = (features, *high_res, coords, labels, None, None)
        with torch.inference_mode():
            self._graphs.warm(*self._graph_call(emb, inputs, True, False), inputs)


def flat_high_res(high_res: tuple[torch.Tensor, ...] | None) -> tuple:
    """SAM 2's two high-resolution maps, or ``(None, None)`` for SAM: a click's inputs are flat."""
    return (None, None) if high_res is None else tuple(high_res)
