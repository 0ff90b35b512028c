"""Mask decoder: output tokens + prompt tokens attend to the image; hypernetworks turn tokens into masks.

Shaped like ``segment_anything/modeling/mask_decoder.py`` (same parts, names and numbers). The one
difference: a batch-1 image embedding is broadcast over the prompts instead of copied with
``repeat_interleave`` (the same values). CPU inference takes :mod:`napari_sam.models.fast`, which
reads these modules' weights and is tested against this code.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import LayerNorm2d


class MaskDecoder(nn.Module):
    """Predicts masks and their IoU from an image embedding and prompt embeddings.

    Args:
        transformer_dim: channels ``C`` of the image embedding and the tokens.
        transformer: the two-way transformer (:class:`~.transformer.TwoWayTransformer`).
        num_multimask_outputs: masks predicted in multimask mode (one more token is the single-mask one).
        activation: the upscaling's activation.
        iou_head_depth, iou_head_hidden_dim: the IoU prediction MLP.
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
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            image_embeddings: ``(1 | B, C, h, w)``; a single embedding is shared by all B prompts.
            image_pe: ``(1, C, h, w)`` positional encoding of the grid.
            sparse_prompt_embeddings: ``(B, K, C)`` points and boxes.
            dense_prompt_embeddings: ``(B, C, h, w)`` mask prompts (or the no-mask embedding).
            multimask_output: return the 3 multimask outputs instead of the single one.

        Returns:
            low-res mask logits ``(B, M, 4h, 4w)`` and IoU predictions ``(B, M)``, M = 3 or 1.
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        mask_slice = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, mask_slice], iou_pred[:, mask_slice]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks ``(B, 4, 4h, 4w)`` and IoUs ``(B, 4)`` (token 0 is the
        single-mask output); arguments as in :meth:`forward`."""
        hs, src = self.attend(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        iou_pred = self.iou_prediction_head(hs[:, 0, :])
        return self.upscale_masks(hs, src), iou_pred

    def attend(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-way transformer on the output tokens + prompts: ``hs (B, 5 + K, C)`` (IoU token,
        mask tokens, prompts) and the image ``src (B, C, h, w)`` it updated.

        A batch-1 image with a dense prompt that is the same for every prompt (the no-mask
        embedding, expanded with stride 0) stays batch 1 into the transformer, which broadcasts it:
        the first layer's image projections are then computed once instead of once per prompt."""
        bs = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(bs, -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

        dense = dense_prompt_embeddings
        if image_embeddings.shape[0] == 1 and dense.shape[0] > 1 and dense.stride(0) == 0:
            dense = dense[:1]
        src = image_embeddings + dense  # (1 | B, C, h, w)
        hs, keys = self.transformer(src, image_pe, tokens)  # keys (B, h*w, C)
        b, (c, h, w) = keys.shape[0], src.shape[1:]
        return hs, keys.transpose(1, 2).reshape(b, c, h, w)

    def upscale_masks(self, hs: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """Mask logits ``(B, 4, 4h, 4w)`` from :meth:`attend`'s ``hs`` and ``src``: the image
        upscaled 4x, dotted with each mask token's hypernetwork output."""
        mask_tokens_out = hs[:, 1 : (1 + self.num_mask_tokens), :]
        upscaled = self.output_upscaling(src)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        return (hyper_in @ upscaled.view(b, c, h * w)).view(b, hyper_in.shape[1], h, w)


class MLP(nn.Module):
    """``num_layers`` linear layers with ``activation`` (ReLU: SAM's) in between: ``(..., in) -> (..., out)``."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        sigmoid_output: bool = False,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.act = activation()
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim], strict=True))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = self.act(layer(x)) if i < self.num_layers - 1 else layer(x)
        return torch.sigmoid(x) if self.sigmoid_output else x
