"""SAM 2 tracking through a stack (napari_sam.volume.tracker) against Meta's SAM2VideoPredictor on the
CPU: the same model object (SAM 2.1 tiny, random weights), the same preprocessed slices; plus
cancel, the bounded memory bank and bad input on a small (256 px) model."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest
import torch
from _sam2_reference import CONFIGS, build_reference, randomize, sam2_package

from napari_sam.errors import SamUserError
from napari_sam.volume.tracker import VolumeTracker
from napari_sam.volume.tracker_inputs import fill_holes

ARCH = "sam2.1_hiera_tiny"


def structured_stack(n: int = 8, h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """``(n, h, w)`` uint8: two bright ellipses drifting across slices on a smooth noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    vol = np.empty((n, h, w), np.uint8)
    for z in range(n):
        img = 40 + 20 * np.sin(xx / 9.0 + z / 3.0) + rng.normal(0, 8, (h, w))
        e1 = ((xx - (35 + 2 * z)) / 16.0) ** 2 + ((yy - 40) / 12.0) ** 2 < 1
        e2 = ((xx - (90 - z)) / 12.0) ** 2 + ((yy - (60 + z)) / 15.0) ** 2 < 1
        img[e1] += 140
        img[e2] += 100
        vol[z] = np.clip(img, 0, 255).astype(np.uint8)
    return vol


def memoize_forward_image(model) -> None:
    """Encode each distinct image once (both predictors call ``model.forward_image``)."""
    cache: dict[str, dict] = {}
    orig = model.forward_image

    def forward_image(img: torch.Tensor) -> dict:
        key = hashlib.blake2b(img.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()
        if key not in cache:
            cache[key] = orig(img)
        return cache[key]

    model.forward_image = forward_image


def meta_state(model, tracker: VolumeTracker, monkeypatch):
    """Meta's inference state with exactly our preprocessed slices as its frames."""
    import sam2.sam2_video_predictor as svp

    images = torch.cat([tracker.frames.image(z) for z in range(tracker.n)])
    h, w = tracker.hw
    monkeypatch.setattr(svp, "load_video_frames", lambda **kw: (images, h, w))
    return model.init_state(video_path="unused")


def meta_propagate(model, state, both: bool = True) -> dict[int, dict[int, np.ndarray]]:
    out: dict[int, dict[int, np.ndarray]] = {}
    for reverse in (False, True) if both else (False,):
        for z, ids, logits in model.propagate_in_video(state, reverse=reverse):
            out[z] = {int(o): (logits[k, 0] > 0).numpy() for k, o in enumerate(ids)}
    return out


def meta_scores(model, state) -> dict[int, dict[int, float]]:
    scores: dict[int, dict[int, float]] = {}
    for idx, oid in state["obj_idx_to_id"].items():
        d = state["output_dict_per_obj"][idx]
        for z, o in {**d["non_cond_frame_outputs"], **d["cond_frame_outputs"]}.items():
            scores.setdefault(int(oid), {})[z] = float(o["object_score_logits"].reshape(-1)[0])
    return scores


def compare(tracker: VolumeTracker, ref_masks, ref_scores, n: int) -> tuple[float, float]:
    """(worst per-slice pixel agreement, worst object-score difference) over every slice and object."""
    worst_agree, worst_score = 1.0, 0.0
    for z in range(n):
        for oid in tracker.object_ids:
            ours = tracker.result.masks.get(z, {}).get(oid, np.zeros(tracker.hw, bool))
            worst_agree = min(worst_agree, float((ours == ref_masks[z][oid]).mean()))
            worst_score = max(worst_score, abs(tracker.objects[oid].object_scores[z] - ref_scores[oid][z]))
    return worst_agree, worst_score


@pytest.mark.slow
def test_parity_with_sam2_video_predictor(monkeypatch):
    model = build_reference(ARCH, seed=1, video=True)
    model.fill_hole_area = 0  # Meta's hole filling needs its CUDA extension (skipped on the CPU)
    model.add_all_frames_to_correct_as_cond = True  # our corrections_as_cond
    memoize_forward_image(model)
    vol = structured_stack(8)
    tracker = VolumeTracker(model, vol)
    state = meta_state(model, tracker, monkeypatch)
    with torch.inference_mode():
        # object 1: a click on ellipse 1; object 2: a box around ellipse 2 (slice 2)
        _, _, ref = model.add_new_points_or_box(state, 2, 1, points=[[39.0, 40.0]], labels=[1])
        ours = tracker.add_prompt(2, 1, points=[[39.0, 40.0]], labels=[1])
        assert (ours == (ref[0, 0] > 0).numpy()).mean() >= 0.999
        _, _, ref = model.add_new_points_or_box(state, 2, 2, box=[74.0, 47.0, 102.0, 78.0])
        ours = tracker.add_prompt(2, 2, box=[74.0, 47.0, 102.0, 78.0])
        assert (ours == (ref[1, 0] > 0).numpy()).mean() >= 0.999
        ref_masks = meta_propagate(model, state)
    tracker.propagate("both")
    agree, dscore = compare(tracker, ref_masks, meta_scores(model, state), 8)
    print(f"\nparity, first propagation: worst slice agreement {agree:.6f}, worst object score diff {dscore:.2e}")
    assert agree >= 0.999 and dscore <= 1e-3, (agree, dscore)

    with torch.inference_mode():  # a correction click on a tracked slice, then propagate again
        _, _, ref = model.add_new_points_or_box(
            state, 5, 1, points=[[50.0, 42.0], [20.0, 70.0]], labels=[1, 0]
        )
    ours = tracker.add_prompt(5, 1, points=[[50.0, 42.0], [20.0, 70.0]], labels=[1, 0])
    assert (ours == (ref[0, 0] > 0).numpy()).mean() >= 0.999
    with torch.inference_mode():
        ref_masks = meta_propagate(model, state)
    tracker.propagate("both")
    agree, dscore = compare(tracker, ref_masks, meta_scores(model, state), 8)
    print(f"parity, after the correction: worst slice agreement {agree:.6f}, worst object score diff {dscore:.2e}")
    assert agree >= 0.999 and dscore <= 1e-3, (agree, dscore)
    for oid in (1, 2):
        assert tracker.found(oid) == sorted(z for z, s in meta_scores(model, state)[oid].items() if s > 0)


# ---------------------------------------------------------------- a small model: cheap checks
@pytest.fixture(scope="module")
def small_model():
    """Meta's SAM 2.1 tiny at 256 px (16 x 16 memory tokens), random weights."""
    sam2_package()
    from sam2.build_sam import build_sam2_video_predictor

    torch.manual_seed(0)
    m = build_sam2_video_predictor(
        CONFIGS[ARCH], ckpt_path=None, device="cpu", hydra_overrides_extra=["++model.image_size=256"]
    )
    m = randomize(m, 0).eval()
    m.fill_hole_area = 0
    return m


@pytest.fixture(scope="module")
def one_backbone(small_model):
    """A ``features`` callable: the backbone of one image for every slice (no encoder per slice)."""
    with torch.inference_mode():
        out = small_model.forward_image(
            torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
        )
    return lambda z: out


def test_parity_small_mask_prompt_two_slices(small_model, monkeypatch):
    """A mask prompt, and an object prompted on two slices (start in the middle), at 256 px."""
    small_model.add_all_frames_to_correct_as_cond = True
    vol = structured_stack(7, 48, 64, seed=2)
    tracker = VolumeTracker(small_model, vol)
    state = meta_state(small_model, tracker, monkeypatch)
    yy, xx = np.mgrid[:48, :64]
    mask = ((xx - 20) / 9.0) ** 2 + ((yy - 20) / 7.0) ** 2 < 1
    with torch.inference_mode():
        small_model.add_new_mask(state, 1, 1, mask)
        small_model.add_new_points_or_box(state, 1, 2, points=[[45.0, 30.0]], labels=[1])
        small_model.add_new_points_or_box(state, 5, 2, points=[[40.0, 33.0], [10.0, 10.0]], labels=[1, 0])
        ref_masks = meta_propagate(small_model, state)
    assert np.array_equal(tracker.add_prompt(1, 1, mask=mask), mask)
    tracker.add_prompt(1, 2, points=[[45.0, 30.0]])
    tracker.add_prompt(5, 2, points=[[40.0, 33.0], [10.0, 10.0]], labels=[1, 0])
    tracker.propagate("both")
    agree, dscore = compare(tracker, ref_masks, meta_scores(small_model, state), 7)
    print(f"\nparity (256 px, mask prompt): worst slice agreement {agree:.6f}, worst score diff {dscore:.2e}")
    assert agree >= 0.999 and dscore <= 1e-3, (agree, dscore)


def test_parity_small_objects_in_one_batch(small_model, monkeypatch):
    """Three objects prompted on the same slice: ours tracks them as one batch per slice, Meta's
    SAM2VideoPredictor one at a time; the same masks and object scores (256 px)."""
    small_model.add_all_frames_to_correct_as_cond = True
    vol = structured_stack(6, 48, 64, seed=4)
    tracker = VolumeTracker(small_model, vol, batch_objects=True)
    state = meta_state(small_model, tracker, monkeypatch)
    prompts = [
        (1, dict(points=[[20.0, 20.0]], labels=[1])),
        (2, dict(box=[30.0, 10.0, 60.0, 40.0])),
        (3, dict(points=[[45.0, 30.0], [10.0, 40.0]], labels=[1, 0])),
    ]
    with torch.inference_mode():
        for oid, p in prompts:
            small_model.add_new_points_or_box(state, 2, oid, **p)
        ref_masks = meta_propagate(small_model, state)
    sizes: list[int] = []
    run_batch = tracker._run_batch
    tracker._run_batch = lambda objs, *a, **k: sizes.append(len(objs)) or run_batch(objs, *a, **k)
    for oid, p in prompts:
        tracker.add_prompt(2, oid, **p)
    tracker.propagate("both")
    assert max(sizes) == 3
    agree, dscore = compare(tracker, ref_masks, meta_scores(small_model, state), 6)
    print(f"\nparity (256 px, 3 objects in one batch): worst agreement {agree:.6f}, worst score diff {dscore:.2e}")
    assert agree >= 0.999 and dscore <= 1e-3, (agree, dscore)


def test_object_tracked_before_its_prompt(small_model, one_backbone):
    """An object prompted on a later slice than the start: tracked there with the memory of its
    prompt and no object pointer (Meta's CPU path fails here: its memory stays bfloat16)."""
    tracker = VolumeTracker(small_model, np.zeros((6, 32, 48), np.uint8), features=one_backbone)
    tracker.add_prompt(1, 1, points=[[20, 10]])
    tracker.add_prompt(4, 2, box=[5, 5, 30, 25])
    tracker.propagate("both")
    assert all(set(o.object_scores) == set(range(6)) for o in tracker.objects.values())


def test_fill_holes():
    logits = torch.full((1, 1, 12, 12), 5.0)
    logits[0, 0, 3:5, 3:5] = -2.0  # a 4-pixel hole
    logits[0, 0, 8:11, 6:11] = -2.0  # a 15-pixel hole
    out = fill_holes(logits, 8)
    assert (out[0, 0, 3:5, 3:5] == 0.1).all() and (out[0, 0, 8:11, 6:11] == -2.0).all()
    assert torch.equal(out[logits > 0], logits[logits > 0])


def test_bounded_memory_over_40_slices(small_model, one_backbone):
    tracker = VolumeTracker(small_model, np.zeros((40, 32, 48), np.uint8), features=one_backbone)
    tracker.add_prompt(0, 1, points=[[20, 10]])
    tracker.add_prompt(0, 2, box=[5, 5, 30, 25])
    counts: list[int] = []
    tracker.propagate("forward", on_slice=lambda z, m: counts.append(tracker.memory_entries()[1]))
    reach = tracker.reach
    assert len(counts) == 40
    # the prompted slice, the slices within reach of it, and those within reach of the current slice
    assert max(counts) == len(set(range(0, reach + 1)) | set(range(39 - reach, 40)))
    assert len(set(counts[2 * reach + 1 :])) == 1, counts  # flat once away from the prompt
    assert tracker.frames.stats["computed"] <= 40  # features: one call per slice, a small cache


def test_cancel_keeps_whole_slices(small_model, one_backbone):
    tracker = VolumeTracker(small_model, np.zeros((10, 32, 48), np.uint8), features=one_backbone)
    tracker.add_prompt(4, 1, points=[[20, 10]])
    tracker.add_prompt(4, 2, box=[5, 5, 30, 25])
    stop = threading.Event()
    seen: list[int] = []

    def on_slice(z, masks):
        seen.append(z)
        assert set(masks) == {1, 2}
        if len(seen) == 3:
            stop.set()

    reports: list[tuple[int, int]] = []
    res = tracker.propagate(
        "both", cancel=stop, on_slice=on_slice, progress=lambda d, t: reports.append((d, t))
    )
    assert res.cancelled and seen == [4, 5, 6]
    assert reports == [(1, 11), (2, 11), (3, 11)]
    assert set(res.masks) <= {4, 5, 6}
    for z in (5, 6):  # whole slices: every object tracked there, none beyond
        assert all(z in tracker.objects[o].object_scores for o in (1, 2))
    assert not any(7 in tracker.objects[o].tracked for o in (1, 2))
    res = tracker.propagate("both")  # and it can go on afterwards
    assert not res.cancelled and all(len(o.tracked) == 10 for o in tracker.objects.values())


def test_features_callable_matches_encoder(small_model):
    vol = structured_stack(3, 40, 56)
    a = VolumeTracker(small_model, vol)
    b = VolumeTracker(small_model, vol, features=lambda z: a.frames.backbone(z))
    for t in (a, b):
        t.add_prompt(1, 3, points=[[20, 16]])
        t.propagate()
    for z in range(3):
        assert np.array_equal(a.result.label_slice(z), b.result.label_slice(z))
    assert a.found(3) == b.found(3)


def test_bad_input(small_model, one_backbone):
    vol = np.zeros((6, 32, 48), np.uint8)
    t = VolumeTracker(small_model, vol, features=one_backbone)
    with pytest.raises(SamUserError, match="nothing to propagate"):
        t.propagate()
    with pytest.raises(
        SamUserError, match=r"slice 6 is out of range: the stack has 6 slices along axis 0 \(0..5\)"
    ):
        t.add_prompt(6, 1, points=[[3, 3]])
    with pytest.raises(SamUserError, match="out of range"):
        t.add_prompt(-7, 1, points=[[3, 3]])
    with pytest.raises(SamUserError, match="empty prompt"):
        t.add_prompt(0, 1)
    with pytest.raises(SamUserError, match="empty prompt"):
        t.add_prompt(0, 1, points=np.zeros((0, 2)))
    with pytest.raises(SamUserError, match="mask prompt is empty"):
        t.add_prompt(0, 1, mask=np.zeros((32, 48), bool))
    with pytest.raises(SamUserError, match="slice shape"):
        t.add_prompt(0, 1, mask=np.ones((30, 48), bool))
    with pytest.raises(SamUserError, match="2 points but 1 labels"):
        t.add_prompt(0, 1, points=[[1, 2], [3, 4]], labels=[1])
    with pytest.raises(SamUserError, match="positive integer"):
        t.add_prompt(0, 0, points=[[1, 2]])
    with pytest.raises(SamUserError, match="cannot be combined"):
        t.add_prompt(0, 1, points=[[1, 2]], mask=np.ones((32, 48), bool))
    assert t.object_ids == []  # nothing was added by the failed calls
    t.add_prompt(0, 1, points=[[10, 10]])
    with pytest.raises(SamUserError, match="unknown object 7: the objects with prompts are 1"):
        t.found(7)
    with pytest.raises(SamUserError, match="unknown object 7"):
        t.clear_prompts(0, 7)
    with pytest.raises(SamUserError, match="unknown object"):
        t.remove_object(7)
    with pytest.raises(SamUserError, match="direction must be one of"):
        t.propagate("sideways")
    with pytest.raises(SamUserError, match="out of range"):
        t.propagate(start=9)
    with pytest.raises(SamUserError, match="axis 3 is out of range"):
        VolumeTracker(small_model, vol, axis=3)
    with pytest.raises(SamUserError, match="unknown prompt keys"):
        t.add_prompts({1: {0: {"point": [1, 2]}}})


def test_our_networks_track_as_meta_model(small_model):
    """Our own SAM 2.1 networks (``build_model``, Meta's weights loaded strictly) carry objects through
    the stack exactly as Meta's modules do under the same tracker (which matches SAM2VideoPredictor)."""
    from napari_sam.models.sam import build_model

    ours = build_model(ARCH, image_size=256)
    ours.load_state_dict(small_model.state_dict(), strict=True)
    vol = structured_stack(6, 48, 64, seed=5)
    runs = []
    for model in (small_model, ours.eval()):
        tracker = VolumeTracker(model, vol)
        tracker.add_prompt(2, 1, points=[[20.0, 20.0]])
        tracker.add_prompt(2, 2, box=[30.0, 10.0, 60.0, 40.0])
        runs.append(tracker.propagate("both"))
    a, b = runs
    assert a.slices == b.slices and a.ids == b.ids
    for z in a.slices:
        for oid in a.ids:
            ma, mb = a.object_masks(oid).get(z), b.object_masks(oid).get(z)
            assert (ma is None) == (mb is None)
            if ma is not None:
                assert (ma == mb).mean() >= 0.999


def test_objects_in_one_batch_as_one_at_a_time(small_model):
    """Three objects prompted on slice 2 (one batch per slice) and a fourth also on slice 5 (its own):
    the same masks and object scores as tracking every object alone."""
    vol = structured_stack(7, 48, 64, seed=3)
    runs, batches = [], []
    for batch in (True, False):
        tracker = VolumeTracker(small_model, vol, batch_objects=batch)
        tracker.add_prompt(2, 1, points=[[20.0, 20.0]])
        tracker.add_prompt(2, 2, box=[30.0, 10.0, 60.0, 40.0])
        tracker.add_prompt(2, 3, points=[[40.0, 30.0], [10.0, 40.0]], labels=[1, 0])
        tracker.add_prompt(2, 4, points=[[50.0, 35.0]])
        tracker.add_prompt(5, 4, points=[[48.0, 38.0]])
        sizes: list[int] = []
        run_batch = tracker._run_batch
        tracker._run_batch = lambda objs, *a, sizes=sizes, run=run_batch, **k: (
            sizes.append(len(objs)) or run(objs, *a, **k)
        )
        tracker.propagate("both")
        runs.append(tracker)
        batches.append(sizes)
    assert max(batches[0]) == 3 and max(batches[1]) == 1
    a, b = runs
    for oid in (1, 2, 3, 4):
        for z in range(7):
            ma = a.result.masks.get(z, {}).get(oid, np.zeros(a.hw, bool))
            mb = b.result.masks.get(z, {}).get(oid, np.zeros(b.hw, bool))
            assert (ma == mb).mean() >= 0.999
            assert abs(a.objects[oid].object_scores[z] - b.objects[oid].object_scores[z]) <= 1e-4
        assert a.found(oid) == b.found(oid)
