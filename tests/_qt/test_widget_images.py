"""Image kinds: RGB, uint16 (contrast limits), 3D slices with an LRU of embeddings, dask, channels."""

from __future__ import annotations

import dask.array as da
import numpy as np
from conftest import direct, image2d, refined, wait_encoded

from napari_sam.engine.images import to_sam_image
from napari_sam.engine.predictor import SamPredictor


def test_rgb_and_uint16(sam_widget, qtbot, tiny_sam):
    viewer, widget = sam_widget
    sam = widget.sam
    rgb = np.stack([image2d(seed=1), image2d(seed=2), image2d(seed=3)], axis=-1)
    viewer.add_image(rgb, name="rgb", rgb=True)
    wait_encoded(qtbot, widget)
    sam.add_point([50, 70])
    best, *_ = direct(tiny_sam, rgb, [[70, 50]])
    np.testing.assert_array_equal(sam.preview_layer.data > 0, best)
    widget.commit()
    assert sam.labels_layer.data.shape == rgb.shape[:2]
    np.testing.assert_array_equal(sam.labels_layer.data, best.astype(np.int32))

    # uint16: SAM sees what napari shows (the layer's contrast limits)
    img16 = image2d(seed=4, dtype=np.uint16)
    layer = viewer.add_image(img16, name="u16", contrast_limits=(1000, 30000))
    widget.image_combo.set_layer(layer)
    widget._on_image_combo()
    widget.labels_combo.set_layer(None)
    widget._on_labels_combo()
    wait_encoded(qtbot, widget)
    sam.add_point([30, 40])
    best, *_ = direct(tiny_sam, to_sam_image(img16, contrast_limits=(1000, 30000)), [[40, 30]])
    np.testing.assert_array_equal(sam.preview_layer.data > 0, best)


def test_3d_slice_cache_and_placement(sam_widget, qtbot, tiny_sam):
    viewer, widget = sam_widget
    sam = widget.sam
    vol = np.stack([image2d(seed=s) for s in range(5)])
    viewer.add_image(vol, name="stack")
    viewer.dims.set_current_step(0, 3)
    wait_encoded(qtbot, widget, (3,))
    assert sam.current_index() == (3,)
    assert sam.points_layer.ndim == 3
    ready = sam.cache.get(sam.embedding_key((3,)))
    assert ready.prepared is not None  # the encode worker also did the decoder's per-image work
    sam.points_layer.add([3, 40, 60])
    assert sam.predictor._prepared is ready.prepared.value  # the first click used it
    best, *_ = direct(tiny_sam, vol[3], [[60, 40]])
    np.testing.assert_array_equal(sam.preview_layer.data > 0, best)
    widget.commit()
    labels = sam.labels_layer.data
    assert labels.shape == vol.shape
    np.testing.assert_array_equal(labels[3], best.astype(np.int32))
    assert not labels[[0, 1, 2, 4]].any()
    # moving the slider encodes the new slice; earlier embeddings stay cached (LRU)
    viewer.dims.set_current_step(0, 1)
    wait_encoded(qtbot, widget, (1,))
    assert sam.has_embedding((3,)) and sam.has_embedding((1,))
    # a point on another slice is not a prompt for the slice on screen
    sam.points_layer.add([3, 40, 60])
    assert sam.objects is None
    sam.points_layer.add([1, 20, 30])
    best1, *_ = direct(tiny_sam, vol[1], [[30, 20]])
    np.testing.assert_array_equal(sam.preview_layer.data > 0, best1)
    widget.commit()
    np.testing.assert_array_equal(sam.labels_layer.data[1], np.where(best1, 2, 0))


def test_dask_reads_only_needed_slices(sam_widget, qtbot, tiny_sam):
    viewer, widget = sam_widget
    sam = widget.sam
    vol = np.stack([image2d(seed=s) for s in range(6)])
    read: list[int] = []

    def load(block, block_info=None):
        read.append(block_info[None]["chunk-location"][0])
        return block

    lazy = da.from_array(vol, chunks=(1, *vol.shape[1:])).map_blocks(load, dtype=vol.dtype)
    viewer.add_image(lazy, name="lazy", contrast_limits=(0, 255))
    viewer.dims.set_current_step(0, 4)
    wait_encoded(qtbot, widget, (4,))
    assert 4 in read and not {1, 5} & set(read)  # the slices shown (and napari's own peek), not all
    sam.points_layer.add([4, 50, 50])
    best, *_ = direct(tiny_sam, vol[4], [[50, 50]], contrast_limits=(0, 255))
    np.testing.assert_array_equal(sam.preview_layer.data > 0, best)


def test_multichannel_composite(sam_widget, qtbot, tiny_sam):
    viewer, widget = sam_widget
    sam = widget.sam
    chans = np.stack([image2d(seed=7), image2d(seed=8)])  # (C=2, H, W)
    viewer.add_image(chans, name="2ch")
    combo = widget.channel_combo
    assert combo.count() == 2 and combo.itemData(1) == 0
    combo.setCurrentIndex(1)
    widget._on_channel(1)
    wait_encoded(qtbot, widget)
    sam.points_layer.add([viewer.dims.current_step[0], 40, 40])
    comp = np.stack([chans[0], chans[1], np.zeros_like(chans[0])], axis=-1)
    best, *_ = direct(tiny_sam, comp, [[40, 40]])
    np.testing.assert_array_equal(sam.preview_layer.data > 0, best)


def test_large_image_in_tiles(sam_widget, qtbot, tiny_sam):
    """The "tiles at full resolution" box: a 600 x 700 image (the tiny model's input is 256 px) is
    encoded in tiles; a click and a refining click give TiledPredictor's masks, commit writes them."""
    from napari_sam.engine.tiling import TiledEmbedding, TiledPredictor

    viewer, widget = sam_widget
    sam = widget.sam
    img = image2d((600, 700), seed=3)
    viewer.add_image(img, name="large")
    wait_encoded(qtbot, widget)
    assert not isinstance(sam.embedding(), TiledEmbedding)
    widget.tiled_check.setChecked(True)
    assert sam.tiled and isinstance(sam.predictor, TiledPredictor)
    wait_encoded(qtbot, widget)
    assert isinstance(sam.embedding(), TiledEmbedding)
    sam.points_layer.add([300, 420])  # napari (row, col)
    masks, scores, second = refined(tiny_sam, img, [[420, 300], [440, 320]], [1, 1], tiled=True)
    np.testing.assert_array_equal(sam.preview_layer.data > 0, masks[int(np.argmax(scores))])
    sam.points_layer.add([320, 440])
    np.testing.assert_array_equal(sam.preview_layer.data > 0, second)
    assert widget.commit() == [1]
    np.testing.assert_array_equal(sam.labels_layer.data, second.astype(np.int32))
    widget.tiled_check.setChecked(False)
    assert not sam.tiled and isinstance(sam.predictor, SamPredictor)


def test_tiles_box_follows_the_models_scale(sam_widget, qtbot, tiny_sam):
    """A model that embeds at its own pixel scale (the nano models) ticks "tiles at full resolution"
    when it loads, and a large image is encoded in tiles; SAM's kind (fills its input) unticks it."""
    from dataclasses import replace

    from _synthetic import make_tiny_sam

    from napari_sam.engine.tiling import TiledEmbedding

    viewer, widget = sam_widget
    sam = widget.sam
    assert not widget.tiled_check.isChecked()
    viewer.add_image(image2d((600, 700), seed=3), name="large")
    native = make_tiny_sam()
    native.preprocessing = replace(native.preprocessing, zoom=1.0)
    sam.set_model(native, device="cpu")
    assert widget.tiled_check.isChecked() and sam.tiled
    wait_encoded(qtbot, widget)
    assert isinstance(sam.embedding(), TiledEmbedding)
    sam.set_model(tiny_sam, device="cpu")
    assert not widget.tiled_check.isChecked() and not sam.tiled
    wait_encoded(qtbot, widget)
    assert not isinstance(sam.embedding(), TiledEmbedding)


def test_zoom_control_embeds_small_images_at_their_own_scale(sam_widget, qtbot, tiny_sam):
    """The "small images: zoom" box: at x1 a 120 x 160 image (the tiny model's input is 256 px) is
    embedded unscaled and zero-padded; a click gives SamPredictor(zoom=1)'s mask, commit writes it;
    back at "fill the input" the image is enlarged to the input again (SAM's resize)."""
    viewer, widget = sam_widget
    sam = widget.sam
    img = image2d(seed=5)
    viewer.add_image(img, name="small")
    wait_encoded(qtbot, widget)
    assert widget.zoom_spin.value() == 0 and sam.zoom is None  # the tiny model's default: fill
    assert sam.embedding().input_size == (192, 256)
    widget.zoom_spin.setValue(1.0)
    assert sam.zoom == 1.0
    wait_encoded(qtbot, widget)
    assert sam.embedding().input_size == (120, 160)
    sam.points_layer.add([50, 70])  # napari (row, col)
    p = SamPredictor(tiny_sam, device="cpu", zoom=1.0)
    p.set_image(img)
    masks, scores, _ = p.predict(np.array([[70, 50]], np.float32), np.array([1], np.float32))
    best = masks[int(np.argmax(scores))]
    np.testing.assert_array_equal(sam.preview_layer.data > 0, best)
    assert widget.commit() == [1]
    np.testing.assert_array_equal(sam.labels_layer.data, best.astype(np.int32))
    widget.zoom_spin.setValue(0.0)
    assert sam.zoom is None
    wait_encoded(qtbot, widget)
    assert sam.embedding().input_size == (192, 256)
