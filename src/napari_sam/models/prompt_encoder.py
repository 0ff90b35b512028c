"""Prompt encoder: points, boxes and mask prompts -> sparse and dense embeddings for the mask decoder."""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d


class PromptEncoder(nn.Module):
    """Encodes prompts for SAM's mask decoder.

    Args:
        embed_dim: prompt embedding channels ``C``.
        image_embedding_size: ``(h, w)`` of the image embedding grid.
        input_image_size: ``(H, W)`` of the padded encoder input (point coordinates are in these pixels).
        mask_in_chans: hidden channels of the mask downscaling convolutions.

    Point labels: 1 positive, 0 negative, -1 padding (not a point), 2/3 top-left/bottom-right box corners.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.num_point_embeddings = 4  # negative, positive, box corner 1, box corner 2
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the embedding grid: ``(1, C, h, w)``."""
        pe = self.pe_layer(self.image_embedding_size).unsqueeze(0)
        return pe.to(self.no_mask_embed.weight.dtype)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """``points (B, N, 2)`` xy, ``labels (B, N)`` -> ``(B, N [+1], C)``."""
        points = points + 0.5  # pixel centres
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        emb = emb.to(self.no_mask_embed.weight.dtype)
        labels = labels[..., None]
        emb = torch.where(labels == -1, self.not_a_point_embed.weight, emb)
        for i, w in enumerate(self.point_embeddings):  # labels 0, 1, 2, 3
            emb = torch.where(labels == i, emb + w.weight, emb)
        return emb

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """``boxes (B, 4)`` xyxy -> ``(B, 2, C)``."""
        coords = (boxes + 0.5).reshape(-1, 2, 2)
        emb = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        emb = emb.to(self.no_mask_embed.weight.dtype)
        corners = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return emb + corners

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """``masks (B, 1, 4h, 4w)`` logits -> ``(B, C, h, w)``."""
        return self.mask_downscaling(masks)

    @staticmethod
    def _get_batch_size(points, boxes, masks) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``sparse (B, K, C)`` and ``dense (B, C, h, w)`` embeddings.

        Points ``((B, N, 2) xy, (B, N) labels)`` and boxes ``(B, 4)`` are in encoder-input pixels;
        a padding point is appended to points when no box is given (as the official does).
        """
        bs = self._get_batch_size(points, boxes, masks)
        weight = self.no_mask_embed.weight
        parts = [weight.new_empty(bs, 0, self.embed_dim)]
        if points is not None:
            parts.append(self._embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            parts.append(self._embed_boxes(boxes))
        sparse = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            dense = weight.reshape(1, -1, 1, 1).expand(bs, -1, *self.image_embedding_size)
        return sparse, dense


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding with random spatial frequencies (buffer ``positional_encoding_gaussian_matrix`` (2, F))."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))
        self._sizes: dict[tuple, torch.Tensor] = {}  # see _size_xy

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` coordinates in [0, 1] -> ``(..., 2F)`` (computed in float32)."""
        coords = 2 * coords.float() - 1
        coords = coords @ self.positional_encoding_gaussian_matrix.float()
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of an ``(h, w)`` grid of pixel centres: ``(2F, h, w)``."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((h, w), device=device, dtype=torch.float32)
        y_embed = (grid.cumsum(dim=0) - 0.5) / h
        x_embed = (grid.cumsum(dim=1) - 0.5) / w
        return self._pe_encoding(torch.stack([x_embed, y_embed], dim=-1)).permute(2, 0, 1)

    def forward_with_coords(self, coords_input: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """``(B, N, 2)`` xy pixels in an ``(H, W)`` image -> ``(B, N, 2F)``."""
        return self._pe_encoding(coords_input.float() / self._size_xy(image_size, coords_input.device))

    def _size_xy(self, image_size: tuple[int, int], device: torch.device) -> torch.Tensor:
        """``(W, H)`` as a float32 tensor on ``device``, made once per size and device: no host ->
        device copy per call (which a CUDA graph capture of a click could not contain)."""
        key = (int(image_size[0]), int(image_size[1]), torch.device(device))
        if key not in self._sizes:
            with torch.inference_mode(False):  # a normal tensor, usable under autograd too
                self._sizes[key] = torch.tensor([image_size[1], image_size[0]], dtype=torch.float32, device=device)
        return self._sizes[key]
