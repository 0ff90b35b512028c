"""TinyViT (MobileSAM ``vit_t``) parity against an independent copy of MobileSAM's encoder.

MobileSAM's own code is not on PyPI. Ultralytics vendors MobileSAM's ``tiny_vit_sam.py`` (as
``ultralytics/models/sam/modules/tiny_encoder.py``) and loads the original ``mobile_sam.pt`` into it,
so its state-dict keys are the official ones. This script downloads the ultralytics wheel (no
dependencies, nothing installed), loads only that file with its three small imports stubbed, and
compares keys, shapes and outputs with ours on random weights.

    python bench/parity_tinyvit.py            # needs PyPI access for the wheel (or --wheel PATH)
"""

from __future__ import annotations

import argparse
import collections.abc
import importlib.util
import subprocess
import sys
import tempfile
import types
import zipfile
from pathlib import Path

import torch

from napari_sam.models import build_model
from napari_sam.models.common import LayerNorm2d


def _reference_tinyvit(wheel: Path, workdir: Path) -> torch.nn.Module:
    with zipfile.ZipFile(wheel) as zf:
        src = zf.read("ultralytics/models/sam/modules/tiny_encoder.py")
    path = workdir / "tiny_encoder_reference.py"
    path.write_bytes(src)
    stubs = {
        "ultralytics.nn.modules": {"LayerNorm2d": LayerNorm2d},
        "ultralytics.utils.instance": {
            "to_2tuple": lambda x: x if isinstance(x, collections.abc.Iterable) else (x, x)
        },
        "ultralytics.utils.torch_utils": {"TORCH_1_11": True},
    }
    for name in ["ultralytics", "ultralytics.nn", "ultralytics.utils", *stubs]:
        module = types.ModuleType(name)
        for key, value in stubs.get(name, {}).items():
            setattr(module, key, value)
        sys.modules[name] = module
    spec = importlib.util.spec_from_file_location("tiny_encoder_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TinyViT(
        img_size=1024, in_chans=3, num_classes=1000, embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0,
        drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0,
        local_conv_size=3, layer_lr_decay=0.8,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", type=Path, help="an ultralytics wheel already on disk")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        wheel = args.wheel
        if wheel is None:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, "ultralytics"],
                check=True,
            )
            wheel = next(workdir.glob("ultralytics-*.whl"))
        ref = _reference_tinyvit(wheel, workdir).eval()
        ours = build_model("vit_t").image_encoder.eval()
        a = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
        b = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        print(f"reference keys {len(a)}, ours {len(b)}")
        print(f"only in reference: {sorted(set(a) - set(b))}")
        print(f"only in ours:      {sorted(set(b) - set(a))}")
        print(f"shape mismatches:  {[k for k in a if k in b and a[k] != b[k]]}")
        ours.load_state_dict(ref.state_dict(), strict=True)
        x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            r, o = ref(x), ours(x)
        diff = (r - o).abs().max().item()
        print(f"output {tuple(o.shape)}, max abs diff {diff:.2e} (max |ref| {r.abs().max().item():.2f})")
        ok = a == b and diff < 1e-3
        print("PARITY OK" if ok else "PARITY FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
