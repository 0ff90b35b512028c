"""LiteMedSAM's official inference code (``../shared/reference/litemedsam``), runnable in tests.

``CVPR24_LiteMedSAM_infer.py`` is a script (argument parsing, model loading and plotting at import),
so its functions, its ``MedSAM_Lite`` class and its model construction are taken from its syntax
tree and run unchanged: ``resize_longest_side`` (OpenCV ``INTER_AREA``), ``pad_image``,
``resize_box_to_256``, ``medsam_inference`` and ``MedSAM_infer_npz_2D`` (whole 2D protocol: npz in,
npz of labels out). ``tiny_vit_sam.py`` needs three timm helpers; timm needs torchvision, which is
unusable here, so a working timm is used as it is, else stand-ins that do what timm's do
(``DropPath`` is never active at inference, ``to_2tuple``, ``trunc_normal_`` only initialises).
segment-anything's modules come from :mod:`_reference` (its torchvision shim).

Only tests and benchmarks use this; the package never imports the reference.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from os.path import basename, join
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "litemedsam"
_NAMES = {
    "resize_longest_side",
    "pad_image",
    "MedSAM_Lite",
    "resize_box_to_256",
    "medsam_inference",
    "MedSAM_infer_npz_2D",
}
_MODEL_VARS = {
    "medsam_lite_image_encoder",
    "medsam_lite_prompt_encoder",
    "medsam_lite_mask_decoder",
    "medsam_lite_model",
}


def _install_timm_stand_in() -> None:
    try:
        from timm.models.layers import DropPath, to_2tuple, trunc_normal_  # noqa: F401
        from timm.models.registry import register_model  # noqa: F401

        return
    except Exception:
        for name in [m for m in sys.modules if m == "timm" or m.startswith("timm.")]:
            del sys.modules[name]

    class DropPath(nn.Module):
        def __init__(self, drop_prob=None):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            if not self.drop_prob or not self.training:
                return x
            keep = 1 - self.drop_prob
            mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
            return x * mask / keep

    def to_2tuple(x):
        return tuple(x) if isinstance(x, list | tuple) else (x, x)

    def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
        return nn.init.trunc_normal_(tensor, mean, std, a, b)

    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    registry = types.ModuleType("timm.models.registry")
    layers.DropPath, layers.to_2tuple, layers.trunc_normal_ = DropPath, to_2tuple, trunc_normal_
    registry.register_model = lambda fn: fn
    timm.models, models.layers, models.registry = models, layers, registry
    sys.modules.update(
        {"timm": timm, "timm.models": models, "timm.models.layers": layers, "timm.models.registry": registry}
    )


def _numpy_1_max() -> types.ModuleType:
    """numpy whose ``max`` returns Python numbers: the script's ``assert np.max(img_3c) < 256`` on a
    uint8 image raises OverflowError under numpy 2 (it was written for numpy 1)."""
    compat = types.ModuleType("numpy")
    compat.__dict__.update(np.__dict__)

    def max_(*args, **kwargs):
        out = np.max(*args, **kwargs)
        return out.item() if np.ndim(out) == 0 else out

    compat.max = max_
    return compat


def available() -> str | None:
    """None when the reference can run here, else why not."""
    if not (REFERENCE_DIR / "CVPR24_LiteMedSAM_infer.py").is_file():
        return f"LiteMedSAM reference code not found at {REFERENCE_DIR}"
    if importlib.util.find_spec("cv2") is None:
        return "the reference needs OpenCV (pip install opencv-python-headless)"
    return None


def reference_namespace(checkpoint: str | Path, out_dir: str | Path) -> dict:
    """The reference script's functions and its loaded ``medsam_lite_model`` (eval, CPU), with
    ``MedSAM_infer_npz_2D`` writing its label npz into ``out_dir`` (no overlay pictures)."""
    import cv2
    from _reference import official

    official()  # segment_anything importable without torchvision
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    _install_timm_stand_in()
    spec = importlib.util.spec_from_file_location("_litemedsam_tiny_vit_sam", REFERENCE_DIR / "tiny_vit_sam.py")
    tiny_vit_sam = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny_vit_sam)

    tree = ast.parse((REFERENCE_DIR / "CVPR24_LiteMedSAM_infer.py").read_text())
    keep = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name in _NAMES:
            keep.append(node)
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id in _MODEL_VARS for t in node.targets
        ):
            keep.append(node)
    found = {getattr(n, "name", None) for n in keep} | {
        t.id for n in keep if isinstance(n, ast.Assign) for t in n.targets
    }
    missing = (_NAMES | _MODEL_VARS) - found
    assert not missing, f"the reference script changed: {sorted(missing)} not found"
    ns = {
        "__name__": "_litemedsam_reference",
        "np": _numpy_1_max(),
        "torch": torch,
        "nn": nn,
        "F": F,
        "cv2": cv2,
        "basename": basename,
        "join": join,
        "TinyViT": tiny_vit_sam.TinyViT,
        "PromptEncoder": PromptEncoder,
        "MaskDecoder": MaskDecoder,
        "TwoWayTransformer": TwoWayTransformer,
        "device": torch.device("cpu"),
        "pred_save_dir": str(out_dir),
        "save_overlay": False,
    }
    exec(compile(ast.Module(body=keep, type_ignores=[]), "CVPR24_LiteMedSAM_infer.py", "exec"), ns)
    model = ns["medsam_lite_model"]
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    model.eval()
    return ns
