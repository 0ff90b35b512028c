"""The image-wide low-res grid of a tiled image and the tiles' own (``TiledPredictor``'s refinements).

On a tiled image the low-res logits (a refinement's ``mask_input``) form one grid over the image,
(ceil(H / c), ceil(W / c)) cells of c = img_size / 256 px. A tile's decoder sees its own
(1, 256, 256) window of it; the overview (the whole image resized to the model's input) sees it
resized. ``emb`` is a ``TiledEmbedding`` (origins, tiles, overview, original_size).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

OUTSIDE_LOGIT = -20.0
"""Logit of the pixels and low-res cells a tiled decode did not cover (a confident "background")."""


def grid_shape(emb: Any, cell: int) -> tuple[int, int]:
    """(rows, cols) of the image-wide low-res grid."""
    h, w = emb.original_size
    return (-(-h // cell), -(-w // cell))


def overview_cells(emb: Any, img_size: int, mask_input_size: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of the overview's low-res logits that cover the (resized) image."""
    ih, iw = emb.overview.input_size
    n = mask_input_size[0]
    return (-(-ih * n // img_size), -(-iw * n // img_size))


def grid_to_tile(m: np.ndarray, k: int, emb: Any, cell: int, img_size: int,
                 mask_input_size: tuple[int, int]) -> np.ndarray:
    """(1, *grid) image-wide logits -> (1, 256, 256) ``mask_input`` of tile ``k`` (-1 overview)."""
    out = np.full((1, *mask_input_size), OUTSIDE_LOGIT, np.float32)
    if k < 0:
        lh, lw = overview_cells(emb, img_size, mask_input_size)
        t = F.interpolate(torch.from_numpy(m)[None], (lh, lw), mode="bilinear", align_corners=False)
        out[:, :lh, :lw] = t[0].numpy()
        return out
    r, c = emb.origins[k]
    sub = m[:, r // cell : r // cell + out.shape[1], c // cell : c // cell + out.shape[2]]
    out[:, : sub.shape[1], : sub.shape[2]] = sub
    return out


def tile_to_grid(lo: np.ndarray, k: int, emb: Any, cell: int, img_size: int,
                 mask_input_size: tuple[int, int]) -> np.ndarray:
    """(C, 256, 256) low-res logits of tile ``k`` (-1 overview) -> (C, *grid), OUTSIDE_LOGIT elsewhere."""
    gh, gw = grid_shape(emb, cell)
    if k < 0:
        lh, lw = overview_cells(emb, img_size, mask_input_size)
        t = torch.from_numpy(np.ascontiguousarray(lo[:, :lh, :lw]))[None]
        return F.interpolate(t, (gh, gw), mode="bilinear", align_corners=False)[0].numpy()
    out = np.full((lo.shape[0], gh, gw), OUTSIDE_LOGIT, np.float32)
    (r, c), (th, tw) = emb.origins[k], emb.tiles[k].original_size
    r, c = r // cell, c // cell
    vh, vw = min(-(-th // cell), gh - r), min(-(-tw // cell), gw - c)
    out[:, r : r + vh, c : c + vw] = lo[:, :vh, :vw]
    return out
