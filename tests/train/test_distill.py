"""Distilling a teacher's cached embeddings into a student encoder (``python -m napari_sam.train distill``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_native import _sample

from napari_sam.models.sam import build_model
from napari_sam.train.distill import distill, init_matching, paired_windows
from napari_sam.train.native import build_cache, draw_windows, window_input


def test_windows_pair_with_the_cache_and_a_student_learns_the_embeddings(tmp_path):
    torch.manual_seed(0)
    teacher = build_model("nano", img_size=128)
    samples = [_sample(seed=k) for k in range(6)]
    build_cache(teacher, samples, tmp_path / "cache", seed=3, side=128, shard=2, log=lambda _: None)
    wins, embs = paired_windows(tmp_path / "cache", samples, seed=3, side=128, shard=2)
    drawn = draw_windows(samples, seed=3, side=128)
    assert len(wins) == len(drawn) == len(embs) == 6
    with torch.inference_mode():  # each cached embedding is the teacher's output for its paired window
        np.testing.assert_allclose(teacher.image_encoder(window_input(wins[4])[None])[0].numpy(),
                                   embs[4].float().numpy(), atol=2e-2, rtol=1e-2)
    with pytest.raises(ValueError, match="seed 4"):  # another seed draws other windows: refused, not mispaired
        paired_windows(tmp_path / "cache", samples, seed=4, side=128, shard=2)

    student = build_model("nano", img_size=128)
    before = [p.detach().clone() for p in student.mask_decoder.parameters()]
    res = distill(student, wins, embs, normalize="mean_std", out=tmp_path / "run", steps=30, batch=2, lr=3e-3,
                  warmup=2, holdout=2, log_every=10, log=lambda _: None)
    assert res["steps"] == 30 and res["train_mse"] < res["variance"]  # better than predicting the mean
    assert all(torch.equal(a, b) for a, b in zip(before, student.mask_decoder.parameters(), strict=True))
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in student.state_dict().items())


def test_init_matching_copies_only_equal_shapes():
    source, target = build_model("nano"), build_model("lite_medsam_nano")
    n = init_matching(target.image_encoder, source.image_encoder)
    src, tgt = source.image_encoder.state_dict(), target.image_encoder.state_dict()
    assert n == sum(1 for k in tgt if k in src and src[k].shape == tgt[k].shape) > 100
    assert torch.equal(tgt["stem.0.0.weight"], src["stem.0.0.weight"])
    assert not torch.equal(tgt["lat8.weight"][:128], src["lat8.weight"])  # 256 vs 128 channels: left alone


def test_export_half_loads_into_a_float32_model(tmp_path, capsys):
    """``export --half``: a whole student in float16 (half the file) that loads strictly as float32."""
    from napari_sam.train.cli import main
    from napari_sam.weights.loading import load_model

    model = build_model("lite_medsam_nano")
    torch.save(model.state_dict(), tmp_path / "model.pt")
    main(["export", "--weights", str(tmp_path / "model.pt"), "--parts", "image_encoder,prompt_encoder,mask_decoder",
          "--half", "--out", str(tmp_path / "half.pt")])
    assert "sha256" in capsys.readouterr().out
    saved = torch.load(tmp_path / "half.pt", weights_only=True)
    assert saved.keys() == model.state_dict().keys() and saved["mask_decoder.iou_token.weight"].dtype == torch.float16
    loaded = load_model(tmp_path / "half.pt", device="cpu")
    assert loaded.arch == "lite_medsam_nano" and next(loaded.parameters()).dtype == torch.float32
    for k, v in model.state_dict().items():
        want = v.half().float() if v.is_floating_point() else v
        assert torch.equal(loaded.state_dict()[k], want), k
