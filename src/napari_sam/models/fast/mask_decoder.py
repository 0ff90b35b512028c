"""The mask decoder on the CPU fast path: a plain :class:`~napari_sam.models.mask_decoder.MaskDecoder`'s
weights, computed with fewer multiply-adds and fewer passes over memory.

What it adds to the plain decoder (each exact up to float rounding, ``tests/models/test_fast.py``):

- the image's prompt-independent work done once (:meth:`FastMaskDecoder.prepare_image`): the first
  two-way layer's image projections, the second layer's through the first one's low-rank update
  (:mod:`.update_projection`);
- a mask prompt as a low-rank change of the prepared image (refining clicks, ``dense_update``);
- only the masks asked for are upscaled, and only those above an IoU threshold for
  :meth:`FastMaskDecoder.predict_filtered` (the automatic generator);
- the deconvolutions as matrix products on channels-last tokens, a batch cut into cache-sized
  pieces (a CPU's caches, not a GPU's).

Inference only: training and GPUs use the plain modules.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..common import act_inplace, to_tokens
from ..mask_decoder import MaskDecoder
from ..prompt_encoder import PromptEncoder
from .transformer import FastTransformer, PreparedImage


@dataclass
class PreparedDecoder:
    """The decoder's prompt-independent work for one image (:meth:`MaskDecoder.prepare_image`):
    the transformer's (``image``)."""

    image: PreparedImage


class FastMaskDecoder:
    """CPU inference of ``module``: the same calls as :class:`MaskDecoder` (``forward``,
    ``predict_masks``) plus :meth:`prepare_image`, ``prepared``/``dense_update`` arguments and
    :meth:`predict_filtered`. Get the one kept per decoder with :func:`fast_decoder`."""

    def __init__(self, module: MaskDecoder) -> None:
        self.module = module
        self.transformer = FastTransformer(module.transformer)

    def __call__(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(*args, **kwargs)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        prepared: PreparedDecoder | None = None,
        dense_update: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            image_embeddings: ``(1 | B, C, h, w)``; a single embedding is shared by all B prompts.
            image_pe: ``(1, C, h, w)``.
            sparse_prompt_embeddings: ``(B, K, C)``.
            dense_prompt_embeddings: ``(B, C, h, w)``.
            multimask_output: return the 3 multimask outputs instead of the single one.
            prepared: :meth:`prepare_image` of this (batch-1) image and dense prompt; the image
                arguments are then not read (same numbers, less work per call).
            dense_update: with ``prepared``, mask prompts as low-rank changes of the prepared
                (no-mask) dense prompt: ``PromptEncoder.mask_update(mask_input)``, ``z (B, L, r)``
                and ``m (r, C)`` (``dense_prompt_embeddings`` is then not read).

        Returns:
            low-res mask logits ``(B, M, 4h, 4w)`` and IoU predictions ``(B, M)``, M = 3 or 1.
        """
        mask_slice = slice(1, None) if multimask_output else slice(0, 1)
        if dense_update is not None and (prepared is None or len(dense_update[0]) != len(sparse_prompt_embeddings)):
            raise ValueError("dense_update needs a prepared image and one low-rank update per prompt")
        return self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, mask_slice, prepared,
            dense_update,
        )

    def prepare_image(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, dense_prompt_embeddings: torch.Tensor
    ) -> PreparedDecoder:
        """The prompt-independent work of one image, done once for all its prompts.

        ``image_embeddings (1, C, h, w)``, ``image_pe (1, C, h, w)``, ``dense_prompt_embeddings``
        ``(1, C, h, w)`` (or broadcastable: the no-mask embedding); valid for prompts with that
        dense prompt, i.e. without ``mask_input``.
        """
        image = self.transformer.prepare(_image_tokens(image_embeddings, dense_prompt_embeddings[:1]), image_pe)
        return PreparedDecoder(image)

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        tokens: slice = slice(None),
        prepared: PreparedDecoder | None = None,
        dense_update: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks ``(B, T, 4h, 4w)`` and IoUs ``(B, T)`` of the mask tokens ``tokens`` (default: all
        ``num_mask_tokens``; token 0 is the single-mask output); see :meth:`forward`."""
        chunks = self._chunks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, dense_update)
        parts = [self._decode(*chunk, tokens, prepared=prepared) for chunk in chunks]
        if len(parts) == 1:
            return parts[0][0], parts[0][1]
        return torch.cat([m for m, _, _ in parts]), torch.cat([i for _, i, _ in parts])

    def predict_filtered(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        min_iou: float,
        prepared: PreparedDecoder | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like :meth:`forward`, but decodes only the masks whose predicted IoU is ``> min_iou``.

        The IoU head reads the output tokens, so masks that a caller would drop on their IoU (the
        automatic generator's ``pred_iou_thresh``) need no upscaling at all.

        Returns:
            IoU predictions ``(B, M)``, the kept entries ``(B, M)`` bool, and their low-res logits
            ``(K, 4h, 4w)`` in row-major order of ``keep`` (K = ``keep.sum()``).
        """
        tokens = slice(1, None) if multimask_output else slice(0, 1)
        ious, keeps, masks = [], [], []
        for chunk in self._chunks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings):
            m, iou, keep = self._decode(*chunk, tokens, min_iou, prepared)
            ious.append(iou)
            keeps.append(keep)
            masks.append(m)
        return torch.cat(ious), torch.cat(keeps), torch.cat(masks)

    def _chunks(self, image_embeddings, image_pe, sparse: torch.Tensor, dense, dense_update=None):
        """Split a batch into pieces whose image-token tensors ``(b, h*w, C)`` stay cache-sized.

        Past the first layer every prompt has its own copy of the image tokens; a batch of 64 of them
        is hundreds of MB and each element-wise pass then runs at memory speed. A few prompts at a
        time keep those passes in cache (same numbers: each prompt is computed independently).
        Yields ``(image_embeddings, image_pe, sparse, dense, dense_update)`` pieces (a batch-1 image
        or positional encoding, and the update's ``m``, are shared by all pieces; ``dense`` is None
        with a ``dense_update``).
        """
        bs = sparse.shape[0]
        tokens = dense_update[0].shape[1] if dense is None else dense.shape[-2] * dense.shape[-1]
        step = max(1, _CACHE_ELEMENTS // (self.module.transformer_dim * tokens))
        if bs <= step:
            yield image_embeddings, image_pe, sparse, dense, dense_update
            return
        for s in range(0, bs, step):
            e = min(bs, s + step)
            img = image_embeddings if image_embeddings is None or len(image_embeddings) == 1 else image_embeddings[s:e]
            pe = image_pe if image_pe is None or len(image_pe) == 1 else image_pe[s:e]
            update = None if dense_update is None else (dense_update[0][s:e], dense_update[1])
            yield img, pe, sparse[s:e], None if dense is None else dense[s:e], update

    def _decode(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        dense_update: tuple[torch.Tensor, torch.Tensor] | None,
        tokens: slice,
        min_iou: float | None = None,
        prepared: PreparedDecoder | None = None,
    ):
        """One chunk: ``(masks (B, T, 4h, 4w), iou, None)``; with ``min_iou``, ``(kept masks
        (K, 4h, 4w), iou, keep)``; ``dense_update`` as in :meth:`forward`."""
        bs = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.module.iou_token.weight, self.module.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(bs, -1, -1)
        tokens_in = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

        # Broadcasting replaces the official repeat_interleave. When the image is shared and the dense
        # prompt is the same for every prompt (no mask input: a stride-0 batch), the image tokens stay
        # batch 1 through the first attention layer, whose image projections are then computed once.
        # only the IoU token and the chosen mask tokens are read after the transformer
        chosen = range(self.module.num_mask_tokens)[tokens]  # only the masks asked for are computed
        final = [0] + [1 + i for i in chosen]
        if prepared is not None:
            h, w = prepared.image.size
            hs, keys = self.transformer.forward(
                None, None, tokens_in, prepared.image, final_tokens=final, dense_update=dense_update
            )
        else:
            dense = dense_prompt_embeddings
            if image_embeddings.shape[0] == 1 and dense.shape[0] > 1 and dense.stride(0) == 0:
                dense = dense[:1]
            h, w = image_embeddings.shape[-2:]
            src = _image_tokens(image_embeddings, dense)  # (1 | B, h*w, C)
            hs, keys = self.transformer.forward(src, image_pe, tokens_in, final_tokens=final)
        iou_pred = self.module.iou_prediction_head(hs[:, 0, :])[:, tokens]
        keep = None
        if min_iou is not None:
            keep = iou_pred > min_iou
            rows = keep.any(1).nonzero().flatten()  # prompts with at least one mask to decode
            hs, keys = hs[rows], keys[rows]
        hyper_in = torch.stack(
            [self.module.output_hypernetworks_mlps[i](hs[:, 1 + j, :]) for j, i in enumerate(chosen)], dim=1
        )
        masks = self._masks(hyper_in, keys)  # (B, T, 16*h*w), sub-pixel order (i, j, a, b, a2, b2)
        if keep is not None:
            masks = masks[keep[rows]]  # (K, 16*h*w)
        # (i, j, a, b, a2, b2) -> row 4i + 2a + a2, column 4j + 2b + b2: sub-pixel planes (a, a2, b, b2)
        # first (a copy in runs of h*w), then pixel_shuffle (~3x faster than one 7-axis permute)
        masks = masks.reshape(-1, h, w, 2, 2, 2, 2).permute(0, 3, 5, 4, 6, 1, 2).reshape(-1, 16, h, w)
        masks = F.pixel_shuffle(masks, 4).reshape(-1, 4 * h, 4 * w)
        if keep is not None:
            return masks, iou_pred, keep
        return masks.reshape(bs, -1, 4 * h, 4 * w), iou_pred, None

    def _masks(self, hyper_in: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """``hyper_in (B, T, C/8)`` . upscaled ``keys (B, L, C)`` -> ``(B, T, 16*L)``, a few hundred
        image tokens at a time: each token upscales to its own 4x4 block, so the pieces are exact, and
        their intermediates (16x the tokens) stay in cache instead of being fresh multi-MB buffers."""
        b, L, c = keys.shape
        step = max(1, _CACHE_ELEMENTS // (16 * 2 * max(b, 1) * c))  # deconv-2 output of a piece: ~1/16 of the budget
        mats = self._upscale_mats()  # once per call, not per piece

        def piece(i: int, j: int) -> torch.Tensor:
            return hyper_in @ self._upscale(F.linear(keys[:, i:j], mats[0], mats[1]), mats).transpose(1, 2)

        if step >= L:
            return piece(0, L)
        return torch.cat([piece(i, i + step) for i in range(0, L, step)], dim=2)

    def _upscale_mats(self) -> tuple[torch.Tensor, ...]:
        """The two deconvolutions as (weight (4*out, in), bias (4*out,)) of linear maps."""
        conv1, conv2 = self.module.output_upscaling[0], self.module.output_upscaling[3]
        return _deconv_matrix(conv1.weight), conv1.bias.repeat(4), _deconv_matrix(conv2.weight), conv2.bias.repeat(4)

    def _upscale(self, x: torch.Tensor, mats: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``output_upscaling`` after its first deconvolution's linear map ``x = keys @ mats[0].T +
        mats[1]`` of image tokens ``keys (B, h*w, C)`` -> ``(B, 16*h*w, C/8)``.

        A ConvTranspose2d with kernel = stride = 2 maps each input pixel to its own 2x2 output block, so
        it is a matrix product on channels-last tokens. Computing it that way avoids the layout copies
        and keeps the sub-pixel offsets as extra axes: output row ``4i + 2a + a2``, column ``4j + 2b + b2``
        sits at token ``(i, j, a, b, a2, b2)``. Same arithmetic as the official convolution path.
        """
        conv1, norm, act1, conv2, act2 = self.module.output_upscaling
        b, n = x.shape[:2]
        x = x.reshape(b, 4 * n, conv1.out_channels)  # (B, h*w*4, C/4)
        x = act_inplace(act1, F.layer_norm(x, (conv1.out_channels,), norm.weight, norm.bias, norm.eps))
        x = F.linear(x, mats[2], mats[3])
        return act_inplace(act2, x.reshape(b, 16 * n, conv2.out_channels))


def _image_tokens(image: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``image (1 | B, C, h, w) + dense (1 | B, C, h, w)`` (broadcast) as tokens ``(1 | B, h*w, C)``.

    A dense prompt that is one vector per prompt (the no-mask embedding, expanded over the grid:
    zero strides) is added to the image's tokens after the transposition; any other one before."""
    b = max(image.shape[0], dense.shape[0])
    if dense.stride(-1) == 0 and dense.stride(-2) == 0 and image.shape[0] == b:
        return to_tokens(image, dense[:, :, 0, 0][:, None, :])
    return to_tokens(image + dense)


# elements of image-token tensors per decoder chunk (16 MiB of float32)
_CACHE_ELEMENTS = 2**22


def _deconv_matrix(weight: torch.Tensor) -> torch.Tensor:
    """ConvTranspose2d weight ``(in, out, 2, 2)`` -> linear weight ``(4*out, in)``, rows ordered (a, b, out)."""
    c_in, c_out = weight.shape[:2]
    return weight.permute(2, 3, 1, 0).reshape(4 * c_out, c_in)


def mask_update(prompt_encoder: PromptEncoder, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A mask prompt's dense embedding minus the no-mask one, as a low-rank product ``z @ m`` (the
    ``dense_update`` of :meth:`FastMaskDecoder.forward`): ``masks (B, 1, 4h, 4w)`` logits -> ``z
    (B, h*w, r + 1)``, ``m (r + 1, C)`` (r = the channels before ``prompt_encoder``'s last 1x1
    convolution, 16 for SAM; the last column of ``z`` is ones). ``(z @ m)`` reshaped to ``(B, C,
    h, w)`` plus the no-mask embedding is the dense embedding."""
    last = prompt_encoder.mask_downscaling[-1]
    feats = prompt_encoder.mask_downscaling[:-1](masks)  # (B, r, h, w)
    b, r = feats.shape[:2]
    ones = feats.new_ones(b, feats.shape[2] * feats.shape[3], 1)
    z = torch.cat([feats.flatten(2).transpose(1, 2), ones], dim=2)
    m = torch.cat([last.weight.reshape(-1, r).T, (last.bias - prompt_encoder.no_mask_embed.weight[0])[None]], dim=0)
    return z, m


_DECODERS: weakref.WeakKeyDictionary[MaskDecoder, FastMaskDecoder] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def fast_decoder(module: MaskDecoder) -> FastMaskDecoder:
    """The one :class:`FastMaskDecoder` of ``module`` (made on first use and kept while the module
    lives, so its caches are shared by every predictor of that model)."""
    with _LOCK:
        fast = _DECODERS.get(module)
        if fast is None:
            fast = _DECODERS[module] = FastMaskDecoder(module)
        return fast
