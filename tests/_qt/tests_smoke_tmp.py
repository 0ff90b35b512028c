import numpy as np
from conftest import wait_encoded, direct, image2d

def test_smoke(sam_widget, qtbot, tiny_sam):
    viewer, widget = sam_widget
    img = image2d()
    layer = viewer.add_image(img, name="blobs")
    assert widget.sam.image_layer is layer
    wait_encoded(qtbot, widget)
    sam = widget.sam
    sam.points_layer.add([40, 60])
    assert sam.objects is not None
    best, *_ = direct(tiny_sam, img, [[60, 40]])
    np.testing.assert_array_equal(sam.preview_layer.data > 0, best)
    ids = widget.commit()
    assert ids == [1]
    np.testing.assert_array_equal(sam.labels_layer.data, best.astype(int))
    assert len(sam.points_layer.data) == 0
    print([l.name for l in viewer.layers])
