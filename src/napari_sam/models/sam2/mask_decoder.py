"""SAM 2's mask decoder: SAM's decoder plus high-resolution features, an object-score token and
a fall-back to the best multimask output when the single mask is unstable.

Shaped like ``sam2/modeling/sam/mask_decoder.py`` (same parameter names, state-dict keys, forward
signature and returns). It reuses SAM 1's two-way transformer (SAM 2's differs only in the token
MLP's key names: :class:`TwoWayTransformer` here), :class:`~..mask_decoder.MLP` and
:class:`~..common.LayerNorm2d`. It is deliberately not a subclass of SAM 1's
:class:`~..mask_decoder.MaskDecoder`: the engine sends those to the CPU fast decoder, which knows
nothing of SAM 2's extra tokens and features. The one difference from Meta's: a batch-1 image
embedding with a prompt-independent dense embedding is broadcast over the prompts instead of copied
with ``repeat_interleave`` (the same values).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..common import LayerNorm2d
from ..mask_decoder import MLP
from ..transformer import TwoWayTransformer as _TwoWayTransformer


class TwoWayTransformer(_TwoWayTransformer):
    """SAM 1's :class:`~..transformer.TwoWayTransformer` with SAM 2's token MLP: each block's ``mlp``
    is an :class:`~..mask_decoder.MLP` of 2 layers (keys ``mlp.layers.0`` / ``mlp.layers.1``, SAM 1:
    ``mlp.lin1`` / ``mlp.lin2``), the same arithmetic. Arguments as SAM 1's (and Meta's)."""

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__(depth, embedding_dim, num_heads, mlp_dim, activation, attention_downsample_rate)
        for layer in self.layers:
            layer.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2, activation=activation)


class MaskDecoder(nn.Module):
    """Predicts masks, their IoU and an object score from an image embedding and prompt embeddings.

    Args:
        transformer_dim: channels ``C`` of the image embedding and the tokens.
        transformer: the two-way transformer (:class:`~..transformer.TwoWayTransformer`).
        num_multimask_outputs: masks predicted in multimask mode (one more token is the single-mask one).
        activation: the upscaling's activation.
        iou_head_depth, iou_head_hidden_dim: the IoU prediction MLP.
        use_high_res_features: add the stride-4 and stride-8 backbone features (projected by
            ``conv_s0`` / ``conv_s1``, which ``Sam2.forward_image`` applies once per image) while upscaling.
        iou_prediction_use_sigmoid: IoU predictions through a sigmoid (SAM 2.1: yes).
        dynamic_multimask_via_stability: in single-mask mode (eval only), fall back to the best
            multimask output when the single mask's stability score (IoU of the masks thresholded
            at ``+delta`` and ``-delta``) is below ``thresh``.
        pred_obj_scores: predict an object-present logit from an extra token (else it is 10).
        pred_obj_scores_mlp: the object-score head is a 3-layer MLP (else one linear layer).
        use_multimask_token_for_obj_ptr: in multimask mode, return the 3 multimask tokens (else the
            single-mask token) as ``sam_tokens_out``.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        use_high_res_features: bool = False,
        iou_prediction_use_sigmoid: bool = False,
        dynamic_multimask_via_stability: bool = False,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
        pred_obj_scores: bool = False,
        pred_obj_scores_mlp: bool = False,
        use_multimask_token_for_obj_ptr: bool = False,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)

        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, transformer_dim)
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr

        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            self.conv_s0 = nn.Conv2d(transformer_dim, transformer_dim // 8, kernel_size=1, stride=1)
            self.conv_s1 = nn.Conv2d(transformer_dim, transformer_dim // 4, kernel_size=1, stride=1)

        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim,
            iou_head_hidden_dim,
            self.num_mask_tokens,
            iou_head_depth,
            sigmoid_output=iou_prediction_use_sigmoid,
        )
        if pred_obj_scores:
            self.pred_obj_score_head: nn.Module = (
                MLP(transformer_dim, transformer_dim, 1, 3) if pred_obj_scores_mlp else nn.Linear(transformer_dim, 1)
            )

        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        repeat_image: bool,
        high_res_features: Sequence[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            image_embeddings: ``(B | 1, C, h, w)``; with ``repeat_image`` each image serves
                ``B / n_images`` consecutive prompts (Meta's ``repeat_interleave``), else one per prompt.
            image_pe: ``(1, C, h, w)`` positional encoding of the grid (``get_dense_pe()``).
            sparse_prompt_embeddings: ``(B, K, C)`` points and boxes.
            dense_prompt_embeddings: ``(B, C, h, w)`` mask prompts (or the no-mask embedding).
            multimask_output: return the 3 multimask outputs instead of the single one.
            repeat_image: see ``image_embeddings``.
            high_res_features: with ``use_high_res_features``, the projected backbone features
                ``[(B | 1, C/8, 4h, 4w), (B | 1, C/4, 2h, 2w)]``.

        Returns:
            ``masks (B, M, 4h, 4w)`` logits, ``iou_pred (B, M)``, ``sam_tokens_out (B, 1 | 3, C)``
            (the mask tokens for the object pointer) and ``object_score_logits (B, 1)``; M = 3 or 1.
        """
        masks, iou_pred, mask_tokens_out, object_score_logits = self.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse_prompt_embeddings,
            dense_prompt_embeddings=dense_prompt_embeddings,
            repeat_image=repeat_image,
            high_res_features=high_res_features,
        )
        if multimask_output:
            masks, iou_pred = masks[:, 1:], iou_pred[:, 1:]
        elif self.dynamic_multimask_via_stability and not self.training:
            masks, iou_pred = self._dynamic_multimask_via_stability(masks, iou_pred)
        else:
            masks, iou_pred = masks[:, 0:1], iou_pred[:, 0:1]

        if multimask_output and self.use_multimask_token_for_obj_ptr:
            sam_tokens_out = mask_tokens_out[:, 1:]
        else:  # the single-mask token, even in multimask mode (what training tracked with)
            sam_tokens_out = mask_tokens_out[:, 0:1]
        return masks, iou_pred, sam_tokens_out, object_score_logits

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        repeat_image: bool,
        high_res_features: Sequence[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """All outputs: masks ``(B, 4, 4h, 4w)``, IoUs ``(B, 4)``, mask tokens ``(B, 4, C)`` and object
        score logits ``(B, 1)`` (token 0 is the single-mask output); arguments as in :meth:`forward`."""
        bs = sparse_prompt_embeddings.shape[0]
        first = [self.obj_score_token.weight] if self.pred_obj_scores else []
        s = len(first)  # index of the IoU token
        output_tokens = torch.cat([*first, self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(bs, -1, -1), sparse_prompt_embeddings), dim=1)

        src = image_embeddings
        if not repeat_image:
            if src.shape[0] != bs:
                raise ValueError(f"{src.shape[0]} image embeddings for {bs} prompts without repeat_image")
        elif src.shape[0] != 1:
            src = torch.repeat_interleave(src, bs, dim=0)
        dense = dense_prompt_embeddings
        if src.shape[0] == 1 and dense.shape[0] > 1 and dense.stride(0) == 0:
            dense = dense[:1]  # the same for every prompt: the transformer broadcasts batch 1
        src = src + dense  # (1 | B, C, h, w)
        if image_pe.shape[0] != 1:
            raise ValueError("image_pe should have size 1 in batch dim (from `get_dense_pe()`)")

        hs, keys = self.transformer(src, image_pe, tokens)  # hs (B, s + 5 + K, C), keys (B, h*w, C)
        iou_token_out = hs[:, s, :]
        mask_tokens_out = hs[:, s + 1 : s + 1 + self.num_mask_tokens, :]
        c, h, w = src.shape[1:]
        src = keys.transpose(1, 2).reshape(keys.shape[0], c, h, w)

        if not self.use_high_res_features:
            upscaled = self.output_upscaling(src)
        else:
            dc1, ln1, act1, dc2, act2 = self.output_upscaling
            feat_s0, feat_s1 = high_res_features
            upscaled = act1(ln1(dc1(src) + feat_s1))
            upscaled = act2(dc2(upscaled) + feat_s0)

        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)

        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0, :])
        else:  # the object is assumed present: sigmoid(10) ~ 1
            object_score_logits = 10.0 * iou_pred.new_ones(iou_pred.shape[0], 1)
        return masks, iou_pred, mask_tokens_out, object_score_logits

    def _get_stability_scores(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """``(B, M, H, W)`` logits -> ``(B, M)``: IoU of the masks thresholded at ``+delta`` and ``-delta``."""
        mask_logits = mask_logits.flatten(-2)
        delta = self.dynamic_multimask_stability_delta
        area_i = torch.sum(mask_logits > delta, dim=-1).float()
        area_u = torch.sum(mask_logits > -delta, dim=-1).float()
        return torch.where(area_u > 0, area_i / area_u, 1.0)

    def _dynamic_multimask_via_stability(
        self, all_mask_logits: torch.Tensor, all_iou_scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The single-mask output ``(B, 1, H, W)``, ``(B, 1)`` where it is stable, else the multimask
        output with the highest predicted IoU."""
        multimask_logits, multimask_iou = all_mask_logits[:, 1:], all_iou_scores[:, 1:]
        best = torch.argmax(multimask_iou, dim=-1)
        batch = torch.arange(multimask_iou.shape[0], device=all_iou_scores.device)
        best_logits = multimask_logits[batch, best].unsqueeze(1)
        best_iou = multimask_iou[batch, best].unsqueeze(1)

        single_logits, single_iou = all_mask_logits[:, 0:1], all_iou_scores[:, 0:1]
        is_stable = self._get_stability_scores(single_logits) >= self.dynamic_multimask_stability_thresh
        mask_logits_out = torch.where(is_stable[..., None, None].expand_as(single_logits), single_logits, best_logits)
        iou_scores_out = torch.where(is_stable.expand_as(single_iou), single_iou, best_iou)
        return mask_logits_out, iou_scores_out
