"""CUDA smoke checks of the GPU-only branches (CUDA-graph clicks, grouped encoding of tiles, crops
and stack slices, segment everything's deferred crops), each against the same call on the CPU.

    python bench/gpu_smoke.py [IMAGE.png]     # on a CUDA machine; prints ok/FAIL per check
"""
import glob
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]
from PIL import Image  # noqa: E402

from napari_sam.automatic.generator import AutomaticMaskGenerator  # noqa: E402
from napari_sam.engine.predictor import SamPredictor  # noqa: E402
from napari_sam.engine.tiling import TiledPredictor  # noqa: E402
from napari_sam.volume.store import EmbeddingStore  # noqa: E402
from napari_sam.weights.loading import load_model  # noqa: E402

candidates = sys.argv[1:] or sorted(glob.glob(str(ROOT / ".gpu" / "*.png"))) or sorted(
    glob.glob(str(ROOT.parent / "shared/data/dsb2018/images/07fb37aa*.png")))
img = np.array(Image.open(candidates[0]).convert("RGB"))
nano = load_model("nano_nuclei", device="cpu")
ok = True
def check(name, cond, detail=""):
    global ok
    ok &= bool(cond)
    print(f"{'ok  ' if cond else 'FAIL'} {name} {detail}", flush=True)

gpu = SamPredictor(nano, device="cuda", precision="fp32")
cpu = SamPredictor(load_model("nano_nuclei", device="cpu"), device="cpu")
# clicks: graphs vs cpu fast path
gpu.set_image(img)
cpu.set_image(img)
for kw in (dict(point_coords=np.array([[300, 200]]), point_labels=np.array([1])),
           dict(box=np.array([250, 150, 350, 260])),
           dict(point_coords=np.array([[300, 200], [320, 210]]), point_labels=np.array([1, 0]))):
    for _ in range(3):  # first call eager, second captured, third replayed
        a, b = gpu.predict(**kw), cpu.predict(**kw)
    check("click " + ",".join(kw), (a[0] == b[0]).mean() > 0.999, f"agree {(a[0] == b[0]).mean():.5f} scores {np.abs(a[1]-b[1]).max():.1e}")
    a2 = gpu.predict(**kw, mask_input=a[2][:1], multimask_output=False)
    b2 = cpu.predict(**kw, mask_input=b[2][:1], multimask_output=False)
    check("refine " + ",".join(kw), (a2[0] == b2[0]).mean() > 0.999, f"agree {(a2[0] == b2[0]).mean():.5f}")
bb = np.array([[250, 150, 350, 260], [10, 10, 100, 120], [400, 300, 500, 420]])
a, b = gpu.predict_batch(boxes=bb), cpu.predict_batch(boxes=bb)
check("predict_batch boxes", (a[0] == b[0]).mean() > 0.999, f"agree {(a[0] == b[0]).mean():.5f}; graphs {len(gpu._graphs) if gpu._graphs is not None else None}")
# encode_batch == one at a time on cuda
embs = gpu.encode_batch([img, img[:300, :400], img[::2, ::2]], batch_size=3)
one = [gpu.compute_embedding(x) for x in (img, img[:300, :400], img[::2, ::2])]
d = max((e.features - o.features).abs().max().item() for e, o in zip(embs, one, strict=True))
check("encode_batch", d < 1e-3, f"max diff {d:.1e}")
# tiles on cuda (tiles encoded 8 at a time) vs cpu
big = np.tile(img, (2, 2, 1))
tg, tc = TiledPredictor(load_model("nano_nuclei", device="cpu"), device="cuda", precision="fp32"), TiledPredictor(load_model("nano_nuclei", device="cpu"), device="cpu")
tg.set_image(big)
tc.set_image(big)
a, b = tg.predict(box=np.array([250, 150, 350, 260])), tc.predict(box=np.array([250, 150, 350, 260]))
check("tiled box", (a[0] == b[0]).mean() > 0.999, f"agree {(a[0] == b[0]).mean():.5f}")
# store precompute in batches of 8
vol = np.stack([img[..., 0]] * 10)
st = EmbeddingStore(gpu, vol)
t0 = time.perf_counter()
n = st.precompute()
dt = time.perf_counter() - t0
e2 = gpu.compute_embedding(np.repeat(vol[3][..., None], 3, -1), contrast_limits=st.contrast_limits)
check("store precompute batch", n == 10 and st.batch_size == 8, f"{n} slices in {dt*1e3:.0f} ms, diff {(st.get(3).features - e2.features).abs().max().item():.1e}")
# automatic with a crop layer (crops encoded together), gpu vs cpu
for layers in (0, 1):
    kw = dict(points_per_side=16, crop_n_layers=layers, pred_iou_thresh=0.5, stability_score_thresh=0.9)
    lg = AutomaticMaskGenerator(gpu, **kw).generate_labels(img)
    lc = AutomaticMaskGenerator(cpu, **kw).generate_labels(img)
    check(f"automatic crop_n_layers={layers}", abs(int(lg.max()) - int(lc.max())) <= 2 and ((lg > 0) == (lc > 0)).mean() > 0.995,
          f"objects gpu {lg.max()} cpu {lc.max()}, foreground agree {((lg > 0) == (lc > 0)).mean():.4f}")
print("ALL OK" if ok else "SOME FAILED")
