"""The CUDA-graph click cache: its bookkeeping runs on a CPU with ``capture=False`` (the same code
path, the function called on the static inputs instead of a graph replayed)."""

from __future__ import annotations

import numpy as np
import torch

from napari_sam.engine.graphs import GraphCache
from napari_sam.engine.predictor import SamPredictor
from napari_sam.models.sam import build_model


def test_a_key_is_captured_on_its_second_use_and_outputs_are_fresh():
    calls = []

    def fn(x, y):
        calls.append(1)
        return x * 2, x + (0 if y is None else y)

    cache = GraphCache(capture=False, max_graphs=2)
    a = torch.ones(3)
    out1 = cache("k", fn, (a, None))  # first use: eager, nothing kept
    assert len(cache) == 0 and torch.equal(out1[0], 2 * a)
    out2 = cache("k", fn, (a + 1, None))  # second use: kept (static copies of the inputs)
    assert len(cache) == 1 and torch.equal(out2[0], 2 * (a + 1))
    out3 = cache("k", fn, (a + 2, None))
    assert torch.equal(out3[0], 2 * (a + 2)) and torch.equal(out2[0], 2 * (a + 1))  # no output aliased
    static = cache._calls["k"].static_in[0]
    assert static is not a and torch.equal(static, a + 2)
    for k in ("k2", "k3"):  # the least recently used key goes beyond max_graphs
        cache.warm(k, fn, (a, None))
    assert list(cache._calls) == ["k2", "k3"]


def test_predictor_with_graphs_equals_the_plain_predictor():
    """``SamPredictor(cuda_graphs=True)`` (capture off a GPU) gives the plain path's numbers for
    points, boxes, mask prompts and batches, on first and repeated shapes; set_image warms the
    first click's key."""
    torch.manual_seed(0)
    model = build_model("nano").eval()
    graphs = SamPredictor(model, device="cpu", decoder="plain", cuda_graphs=True)
    plain = SamPredictor(model, device="cpu", decoder="plain", cuda_graphs=False)
    image = np.random.default_rng(0).integers(0, 255, (300, 420), dtype=np.uint8)
    graphs.set_image(image)
    plain.set_image_embedding(graphs.embedding)
    assert len(graphs._graphs) == 1  # the first click, captured ahead
    rng = np.random.default_rng(2)
    for _ in range(3):
        pts = rng.uniform(0, 300, (2, 2))
        for kwargs in (
            dict(point_coords=pts[:1], point_labels=np.array([1])),
            dict(point_coords=pts, point_labels=np.array([1, 0]), box=np.array([10, 20, 200, 250])),
        ):
            a = graphs.predict(**kwargs)
            b = plain.predict(**kwargs)
            for x, y in zip(a, b, strict=True):
                np.testing.assert_array_equal(x, y)
            a2 = graphs.predict(**kwargs, mask_input=a[2][:1], multimask_output=False)
            b2 = plain.predict(**kwargs, mask_input=b[2][:1], multimask_output=False)
            for x, y in zip(a2, b2, strict=True):
                np.testing.assert_array_equal(x, y)
        ab = graphs.predict_batch(boxes=np.array([[10, 20, 200, 250], [30, 30, 90, 120]]))
        bb = plain.predict_batch(boxes=np.array([[10, 20, 200, 250], [30, 30, 90, 120]]))
        for x, y in zip(ab, bb, strict=True):
            np.testing.assert_array_equal(x, y)
    assert len(graphs._graphs) == 5  # one per prompt shape, the warmed first click among them
    assert SamPredictor(model, device="cpu").decoder_path == "fast"  # a CPU's default: no graphs
    assert SamPredictor(model, device="cpu")._graphs is None
