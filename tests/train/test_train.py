"""Training package: prompt sampling, data windows, losses, a few steps + resume, evaluation, fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.models.nano import build_nano
from napari_sam.train import data, prompts
from napari_sam.train.evaluate import evaluate_image
from napari_sam.train.loop import TrainConfig, Trainer, train
from napari_sam.train.losses import sam_loss


def _disks(seed: int, n: int = 4, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = rng.normal(30, 5, (size, size))
    lab = np.zeros((size, size), np.int32)
    for i in range(n):
        cy, cx, r = rng.uniform(20, size - 20), rng.uniform(20, size - 20), rng.uniform(8, 14)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[m], lab[m] = 200, i + 1
    return np.clip(img, 0, 255).astype(np.uint8), lab


@pytest.fixture(scope="module")
def samples():
    return [data.prepare(*_disks(s), img_size=128, sid=str(s)) for s in (0, 1)]


def test_points_inside_and_centre():
    rng = np.random.default_rng(0)
    m = np.zeros((40, 50), bool)
    m[5:25, 10:30] = True
    for power in (0.0, 2.0):
        x, y = prompts.random_point(m, rng, power)
        assert m[int(y), int(x)]
    x, y = prompts.center_point(m)
    assert 13 <= y <= 16 and 18 <= x <= 21  # (x, y) order, the middle of the square
    box = prompts.jitter_box(m, rng, noise=0.0)
    np.testing.assert_array_equal(box, [10, 5, 29, 24])
    assert prompts.center_point(np.zeros((4, 4), bool)) is None


def test_corrective_points_in_error_regions():
    rng = np.random.default_rng(1)
    gt = np.zeros((30, 30), bool)
    gt[5:20, 5:20] = True
    pred = np.zeros_like(gt)
    pred[5:20, 5:12] = True  # misses the right part -> positive click there
    for r in (None, rng):
        x, y, label = prompts.corrective_point(pred, gt, r)
        assert label == 1 and gt[int(y), int(x)] and not pred[int(y), int(x)]
    pred = gt.copy()
    pred[22:29, 22:29] = True  # a false blob -> negative click there
    for r in (None, rng):
        x, y, label = prompts.corrective_point(pred, gt, r)
        assert label == 0 and pred[int(y), int(x)] and not gt[int(y), int(x)]
    assert prompts.corrective_point(gt, gt, rng) is None


def test_preprocessing_matches_predictor():
    from napari_sam.engine.transforms import ResizeLongestSide

    img = np.random.default_rng(0).integers(0, 255, (60, 90), dtype=np.uint8)
    s = data.prepare(img, np.ones((60, 90), np.int32), 128)
    ref = ResizeLongestSide(128).apply_image(np.repeat(img[..., None], 3, 2))
    np.testing.assert_array_equal(s.image, ref)
    assert s.labels.shape == (85, 128)


def test_windows(samples):
    rng = np.random.default_rng(0)
    big = data.prepare(*_disks(3, n=12, size=256), img_size=512)
    for _ in range(5):
        w = data.random_window(big, rng, 256, 512)
        assert w.image.shape == (256, 256, 3) and w.labels.shape == (256, 256)
        assert w.offset[0] % 8 == 0 and w.offset[1] % 8 == 0 and max(w.offset) <= 256
        assert (w.labels > 0).any()


def test_scale_augmentation_follows_its_range():
    img, lab = _disks(2, size=64)
    rng = np.random.default_rng(0)
    for s in (0.5, 3.0):
        big_img, big_lab = data._augment_geometry(img[..., None].repeat(3, 2), lab, rng, 512, 1.0, (s, s))
        assert big_lab.shape == (round(64 * s), round(64 * s)) and big_img.shape[:2] == big_lab.shape
        assert set(np.unique(big_lab)) <= set(np.unique(lab))  # labels resized by nearest neighbour


def test_sam_loss_takes_best_mask():
    tgt = torch.zeros(2, 8, 8)
    tgt[:, 2:6, 2:6] = 1
    good = tgt * 20 - 10
    logits = torch.stack([-good, good, -good], 1)
    loss, iou = sam_loss(logits, torch.ones(2, 3), tgt)
    torch.testing.assert_close(iou, torch.ones(2))
    assert loss.item() < 0.7  # mask loss of the right mask ~0; MSE of the IoU head (1 vs 0, 1, 0)


def test_steps_reduce_loss_and_resume(samples, tmp_path):
    torch.manual_seed(0)
    model = build_nano(img_size=128)
    cfg = TrainConfig(steps=30, lr=2e-3, warmup=3, batch=2, objects=3, focal_weight=1.0, seed=0)
    tr = Trainer(model, samples, cfg)
    losses = [tr.step()["loss"] for _ in range(30)]
    assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6])
    ck = tmp_path / "ck.pt"
    tr.save(ck)
    tr2 = Trainer(build_nano(img_size=128), samples, cfg)
    tr2.load(ck)
    assert tr2.step_idx == 30
    for (k, a), b in zip(model.state_dict().items(), tr2.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    # train() resumes from the checkpoint and stops at the schedule's end
    cfg2 = TrainConfig(**{**cfg.__dict__, "steps": 32})
    logs: list[str] = []
    train(build_nano(img_size=128), samples, cfg2, checkpoint=ck, export=tmp_path / "m.pt", log=logs.append)
    assert any("resumed" in line for line in logs)
    assert torch.load(ck, weights_only=False)["step"] == 32
    from napari_sam.weights.loading import load_state_dict

    assert "image_encoder.lat8.weight" in load_state_dict(tmp_path / "m.pt")


def test_windows_from_worker_processes_are_seeded(samples):
    """``workers > 0``: windows come from forked processes, the same trainer seed gives the same
    windows, and a step trains on them."""
    cfg = TrainConfig(steps=2, warmup=1, batch=2, objects=2, focal_weight=1.0, seed=5, window=64, workers=1)
    got = []
    for _ in range(2):
        tr = Trainer(build_nano(img_size=128), samples, cfg)
        try:
            wins = tr._windows(64)
            got.append(np.stack([w.image for w in wins]))
            assert all(w.image.shape == (64, 64, 3) and (w.labels > 0).any() for w in wins)
            assert np.isfinite(tr.step()["loss"])
        finally:
            tr.pool.close()
    np.testing.assert_array_equal(got[0], got[1])


class _Oracle:
    """A predictor stand-in that returns the ground-truth object under the first point / box centre."""

    def __init__(self, labels):
        self.labels = labels

    def set_image(self, image):
        pass

    def predict_batch(self, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                      multimask_output=False):
        xy = point_coords[:, 0] if point_coords is not None else (boxes[:, :2] + boxes[:, 2:]) / 2
        ids = [self.labels[int(y), int(x)] for x, y in xy]
        c = 3 if multimask_output else 1
        masks = np.stack([np.repeat((self.labels == i)[None], c, 0) for i in ids])
        return masks, np.ones((len(ids), c)), np.zeros((len(ids), c, 256, 256), np.float32)


def test_evaluate_perfect_predictions():
    img, lab = _disks(5)
    res = evaluate_image(_Oracle(lab), img, lab, clicks=5)
    assert len(res["point"]) == lab.max()
    for key in ("point", "point_single", "box", "box_multi", "click3", "click5"):
        assert np.allclose(res[key], 1.0), key
    assert np.allclose(res["noc85"], 1.0) and np.allclose(res["noc90"], 1.0)


def test_models_with_one_encoder_share_embeddings():
    """Several models: the same objects and prompts; a model with another decoder on the same encoder
    reuses the first one's embedding and gets exactly what it gets alone."""
    from napari_sam.train.evaluate import evaluate_model, evaluate_models

    torch.manual_seed(0)
    a = build_nano(img_size=128)
    b = build_nano(img_size=128)
    b.image_encoder.load_state_dict(a.image_encoder.state_dict())
    c = build_nano(img_size=128)  # another encoder
    pairs = [_disks(s) for s in (7, 8)]
    imgs, labs = [p[0] for p in pairs], [p[1] for p in pairs]
    res = evaluate_models([a, b, c], images=imgs, labels=labs, clicks=3, tiled=True)
    assert [r["shares_embeddings_with"] for r in res] == [0, 0, 2]
    alone = evaluate_model(b, images=imgs, labels=labs, clicks=3, tiled=True)
    assert res[1]["all"] == alone["all"]


def test_finetune_on_arrays(tmp_path):
    from napari_sam.train import finetune
    from napari_sam.weights.loading import load_model

    imgs, labs = zip(*[_disks(s) for s in (7, 8)], strict=True)
    model = finetune(build_nano(img_size=128), list(imgs), list(labs), out=tmp_path, steps=2, threads=None,
                     device="cpu")
    assert not model.training
    # nano has no size-dependent parameters: the 128-px weights load into the 512-px architecture
    assert load_model(tmp_path / "model.pt", device="cpu").arch == "nano"
