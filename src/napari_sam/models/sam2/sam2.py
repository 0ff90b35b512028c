"""The SAM 2 model: Meta's ``SAM2Base`` container (its modules, parameters, settings and state-dict
keys) with the interface of our SAM 1 :class:`~napari_sam.models.sam.Sam`, the SAM 2.1 settings per
architecture and the builders registered with :func:`~napari_sam.models.sam.build_model`.

The prompt encoder is SAM 1's :class:`~napari_sam.models.prompt_encoder.PromptEncoder`: SAM 2's is
the same module (box corners as points labelled 2 and 3, -1 padding, the same keys and numbers).

>>> model = build_model("sam2.1_hiera_tiny")   # random weights; the official checkpoints load strictly
>>> embed, (feat_s0, feat_s1) = model.embed(model.preprocess(images_1024))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.init import trunc_normal_

from ..mask_decoder import MLP
from ..prompt_encoder import PromptEncoder
from ..sam import Preprocessing, _count_blocks, register_arch
from .mask_decoder import MaskDecoder, TwoWayTransformer

PIXEL_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # ImageNet's, in 0-255 units
PIXEL_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
SAM2_PREPROCESSING = Preprocessing(resize="square")  # stretched to img_size x img_size, no padding


@dataclass(frozen=True)
class Sam2Config:
    """The SAM 2.1 settings of one architecture: ``SAM2Base``'s arguments from Meta's config
    (``configs/sam2.1/sam2.1_hiera_*.yaml``, ``model``), with the dynamic-multimask overrides that
    Meta's ``build_sam2`` adds (``sam_mask_decoder_extra_args``), and the Hiera trunk's width and
    stages (what tells the checkpoints apart; ``build_image_encoder(arch)`` holds the rest)."""

    trunk_embed_dim: int
    trunk_stages: tuple[int, ...]
    num_maskmem: int = 7
    image_size: int = 1024
    backbone_stride: int = 16
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    use_mask_input_as_output_without_sam: bool = True
    # Meta's video builder sets this (memories of clicked frames from binarised masks); only tracking reads it
    binarize_mask_from_pts_for_mem_enc: bool = True
    directly_add_no_mem_embed: bool = True
    no_obj_embed_spatial: bool = True
    use_high_res_features_in_sam: bool = True
    multimask_output_in_sam: bool = True
    iou_prediction_use_sigmoid: bool = True
    use_obj_ptrs_in_encoder: bool = True
    add_tpos_enc_to_obj_ptrs: bool = True
    proj_tpos_enc_in_obj_ptrs: bool = True
    use_signed_tpos_enc_to_obj_ptrs: bool = True
    only_obj_ptrs_in_the_past_for_eval: bool = True
    pred_obj_scores: bool = True
    pred_obj_scores_mlp: bool = True
    fixed_no_obj_ptr: bool = True
    multimask_output_for_tracking: bool = True
    use_multimask_token_for_obj_ptr: bool = True
    multimask_min_pt_num: int = 0
    multimask_max_pt_num: int = 1
    use_mlp_for_obj_ptr_proj: bool = True
    compile_image_encoder: bool = False
    dynamic_multimask_via_stability: bool = True  # the builder's overrides, into the mask decoder
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98

    _DECODER_ARGS = ("dynamic_multimask_via_stability", "dynamic_multimask_stability_delta",
                     "dynamic_multimask_stability_thresh")

    def model_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :class:`Sam2` (and of Meta's ``SAM2Base``), less the modules."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        kwargs = {k: v for k, v in values.items() if not k.startswith("trunk_") and k not in self._DECODER_ARGS}
        kwargs["sam_mask_decoder_extra_args"] = {k: values[k] for k in self._DECODER_ARGS}
        return kwargs


SAM21_CONFIGS: dict[str, Sam2Config] = {
    "sam2.1_hiera_tiny": Sam2Config(trunk_embed_dim=96, trunk_stages=(1, 2, 7, 2)),
    "sam2.1_hiera_small": Sam2Config(trunk_embed_dim=96, trunk_stages=(1, 2, 11, 2)),
    "sam2.1_hiera_base_plus": Sam2Config(trunk_embed_dim=112, trunk_stages=(2, 3, 16, 3)),
    "sam2.1_hiera_large": Sam2Config(trunk_embed_dim=144, trunk_stages=(2, 6, 36, 4)),
}


class Sam2(nn.Module):
    """SAM 2: Meta's ``SAM2Base`` (same constructor, attributes, settings and state-dict keys, so
    code written for it drives this; the official ``sam2.1_hiera_*.pt`` ``"model"`` dicts load
    strictly) plus SAM 1's :class:`~napari_sam.models.sam.Sam` interface for the image predictor
    (``prompt_encoder``, ``mask_decoder``, ``img_size``, ``embedding_size``, ``preprocess``, ``embed``).

    Args:
        image_encoder: Hiera trunk + FPN neck: ``(B, 3, S, S)`` -> dict with ``backbone_fpn``
            (three maps, strides 4, 8, 16, ``neck.d_model`` channels) and ``vision_pos_enc``.
        memory_attention, memory_encoder: the tracking modules (used by the tracking step).
        **config: ``SAM2Base``'s settings, same names and defaults (see Meta's ``sam2_base.py``;
            :class:`Sam2Config` has SAM 2.1's).
        arch: the registry name (:func:`~napari_sam.models.sam.build_model` sets it).
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: nn.Module,
        memory_attention: nn.Module,
        memory_encoder: nn.Module,
        num_maskmem: int = 7,
        image_size: int = 512,
        backbone_stride: int = 16,
        sigmoid_scale_for_mem_enc: float = 1.0,
        sigmoid_bias_for_mem_enc: float = 0.0,
        binarize_mask_from_pts_for_mem_enc: bool = False,
        use_mask_input_as_output_without_sam: bool = False,
        max_cond_frames_in_attn: int = -1,
        directly_add_no_mem_embed: bool = False,
        use_high_res_features_in_sam: bool = False,
        multimask_output_in_sam: bool = False,
        multimask_min_pt_num: int = 1,
        multimask_max_pt_num: int = 1,
        multimask_output_for_tracking: bool = False,
        use_multimask_token_for_obj_ptr: bool = False,
        iou_prediction_use_sigmoid: bool = False,
        memory_temporal_stride_for_eval: int = 1,
        non_overlap_masks_for_mem_enc: bool = False,
        use_obj_ptrs_in_encoder: bool = False,
        max_obj_ptrs_in_encoder: int = 16,
        add_tpos_enc_to_obj_ptrs: bool = True,
        proj_tpos_enc_in_obj_ptrs: bool = False,
        use_signed_tpos_enc_to_obj_ptrs: bool = False,
        only_obj_ptrs_in_the_past_for_eval: bool = False,
        pred_obj_scores: bool = False,
        pred_obj_scores_mlp: bool = False,
        fixed_no_obj_ptr: bool = False,
        soft_no_obj_ptr: bool = False,
        use_mlp_for_obj_ptr_proj: bool = False,
        no_obj_embed_spatial: bool = False,
        sam_mask_decoder_extra_args: Mapping[str, Any] | None = None,
        compile_image_encoder: bool = False,
        *,
        arch: str = "custom",
    ) -> None:
        super().__init__()
        if proj_tpos_enc_in_obj_ptrs and not add_tpos_enc_to_obj_ptrs:
            raise ValueError("proj_tpos_enc_in_obj_ptrs needs add_tpos_enc_to_obj_ptrs")
        if fixed_no_obj_ptr and not (pred_obj_scores and use_obj_ptrs_in_encoder):
            raise ValueError("fixed_no_obj_ptr needs pred_obj_scores and use_obj_ptrs_in_encoder")
        self.arch = arch
        self.preprocessing = SAM2_PREPROCESSING
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), False)

        # the image backbone: levels 0, 1, 2 with high-res features, else level 2 only
        self.image_encoder = image_encoder
        self.use_high_res_features_in_sam = use_high_res_features_in_sam
        self.num_feature_levels = 3 if use_high_res_features_in_sam else 1
        self.use_obj_ptrs_in_encoder = use_obj_ptrs_in_encoder
        self.max_obj_ptrs_in_encoder = max_obj_ptrs_in_encoder
        if use_obj_ptrs_in_encoder:  # mask prompt -> stride 4, in SAM's logit scale, for a pointer
            self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.add_tpos_enc_to_obj_ptrs = add_tpos_enc_to_obj_ptrs
        self.proj_tpos_enc_in_obj_ptrs = proj_tpos_enc_in_obj_ptrs
        self.use_signed_tpos_enc_to_obj_ptrs = use_signed_tpos_enc_to_obj_ptrs
        self.only_obj_ptrs_in_the_past_for_eval = only_obj_ptrs_in_the_past_for_eval

        # memory attention (current frame <- memories and object pointers) and memory encoder
        self.memory_attention = memory_attention
        self.hidden_dim = image_encoder.neck.d_model
        self.memory_encoder = memory_encoder
        self.mem_dim = self.hidden_dim
        out_proj = getattr(memory_encoder, "out_proj", None)
        if hasattr(out_proj, "weight"):  # memories compressed along channels
            self.mem_dim = out_proj.weight.shape[0]
        self.num_maskmem = num_maskmem
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(num_maskmem, 1, 1, self.mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, self.hidden_dim))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, self.hidden_dim))
        for p in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc):
            trunc_normal_(p, std=0.02)
        self.directly_add_no_mem_embed = directly_add_no_mem_embed
        self.sigmoid_scale_for_mem_enc = sigmoid_scale_for_mem_enc
        self.sigmoid_bias_for_mem_enc = sigmoid_bias_for_mem_enc
        self.binarize_mask_from_pts_for_mem_enc = binarize_mask_from_pts_for_mem_enc
        self.non_overlap_masks_for_mem_enc = non_overlap_masks_for_mem_enc
        self.memory_temporal_stride_for_eval = memory_temporal_stride_for_eval
        self.use_mask_input_as_output_without_sam = use_mask_input_as_output_without_sam
        self.multimask_output_in_sam = multimask_output_in_sam
        self.multimask_min_pt_num = multimask_min_pt_num
        self.multimask_max_pt_num = multimask_max_pt_num
        self.multimask_output_for_tracking = multimask_output_for_tracking
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr
        self.iou_prediction_use_sigmoid = iou_prediction_use_sigmoid

        # the SAM heads
        self.image_size = image_size
        self.backbone_stride = backbone_stride
        self.sam_mask_decoder_extra_args = sam_mask_decoder_extra_args
        self.pred_obj_scores = pred_obj_scores
        self.pred_obj_scores_mlp = pred_obj_scores_mlp
        self.fixed_no_obj_ptr = fixed_no_obj_ptr
        self.soft_no_obj_ptr = soft_no_obj_ptr
        if pred_obj_scores and use_obj_ptrs_in_encoder:
            self.no_obj_ptr = nn.Parameter(torch.zeros(1, self.hidden_dim))
            trunc_normal_(self.no_obj_ptr, std=0.02)
        self.use_mlp_for_obj_ptr_proj = use_mlp_for_obj_ptr_proj
        self.no_obj_embed_spatial: nn.Parameter | None = None
        if no_obj_embed_spatial:
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, self.mem_dim))
            trunc_normal_(self.no_obj_embed_spatial, std=0.02)
        self._build_sam_heads()
        self.max_cond_frames_in_attn = max_cond_frames_in_attn

        if compile_image_encoder:  # the forward only, so that checkpoints still load
            self.image_encoder.forward = torch.compile(
                self.image_encoder.forward, mode="max-autotune", fullgraph=True, dynamic=False
            )

    def _build_sam_heads(self) -> None:
        """SAM's prompt encoder and mask decoder (SAM's sizes), and the object-pointer projections."""
        self.sam_prompt_embed_dim = self.hidden_dim
        self.sam_image_embedding_size = self.image_size // self.backbone_stride
        grid = (self.sam_image_embedding_size, self.sam_image_embedding_size)
        self.sam_prompt_encoder = PromptEncoder(
            embed_dim=self.sam_prompt_embed_dim,
            image_embedding_size=grid,
            input_image_size=(self.image_size, self.image_size),
            mask_in_chans=16,
        )
        self.sam_mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=self.sam_prompt_embed_dim, mlp_dim=2048, num_heads=8),
            transformer_dim=self.sam_prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            use_high_res_features=self.use_high_res_features_in_sam,
            iou_prediction_use_sigmoid=self.iou_prediction_use_sigmoid,
            pred_obj_scores=self.pred_obj_scores,
            pred_obj_scores_mlp=self.pred_obj_scores_mlp,
            use_multimask_token_for_obj_ptr=self.use_multimask_token_for_obj_ptr,
            **(self.sam_mask_decoder_extra_args or {}),
        )
        c = self.hidden_dim
        if not self.use_obj_ptrs_in_encoder:
            self.obj_ptr_proj: nn.Module = nn.Identity()
        elif self.use_mlp_for_obj_ptr_proj:
            self.obj_ptr_proj = MLP(c, c, c, 3)
        else:
            self.obj_ptr_proj = nn.Linear(c, c)
        # the temporal encoding's own projection, apart from the spatial one
        self.obj_ptr_tpos_proj = nn.Linear(c, self.mem_dim) if self.proj_tpos_enc_in_obj_ptrs else nn.Identity()

    # ------------------------------------------------------------------ SAM2Base's image path

    def forward(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "Sam2 has no forward: embed() + prompt_encoder + mask_decoder predict on images "
            "(napari_sam.engine.SamPredictor), the tracking step on frames"
        )

    def forward_image(self, img_batch: torch.Tensor) -> dict[str, Any]:
        """The image encoder's output for ``img_batch (B, 3, S, S)`` (normalised), the stride-4 and
        stride-8 maps already projected by the decoder's ``conv_s0`` / ``conv_s1`` (once per image
        instead of once per click)."""
        backbone_out = self.image_encoder(img_batch)
        if self.use_high_res_features_in_sam:
            fpn = backbone_out["backbone_fpn"]
            fpn[0] = self.sam_mask_decoder.conv_s0(fpn[0])
            fpn[1] = self.sam_mask_decoder.conv_s1(fpn[1])
        return backbone_out

    def _prepare_backbone_features(
        self, backbone_out: dict[str, Any]
    ) -> tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
        """The last ``num_feature_levels`` maps and position encodings flattened to ``(HW, B, C)``:
        ``(backbone_out (a shallow copy), vision_feats, vision_pos_embeds, feat_sizes [(H, W)])``."""
        backbone_out = backbone_out.copy()
        if len(backbone_out["backbone_fpn"]) != len(backbone_out["vision_pos_enc"]):
            raise ValueError("backbone_fpn and vision_pos_enc differ in length")
        if len(backbone_out["backbone_fpn"]) < self.num_feature_levels:
            raise ValueError(f"the backbone gave fewer than {self.num_feature_levels} feature levels")
        feature_maps = backbone_out["backbone_fpn"][-self.num_feature_levels :]
        vision_pos_embeds = backbone_out["vision_pos_enc"][-self.num_feature_levels :]
        feat_sizes = [(x.shape[-2], x.shape[-1]) for x in vision_pos_embeds]
        vision_feats = [x.flatten(2).permute(2, 0, 1) for x in feature_maps]
        vision_pos_embeds = [x.flatten(2).permute(2, 0, 1) for x in vision_pos_embeds]
        return backbone_out, vision_feats, vision_pos_embeds, feat_sizes

    # ------------------------------------------------------------------ SAM 1's interface

    @property
    def prompt_encoder(self) -> PromptEncoder:
        return self.sam_prompt_encoder

    @property
    def mask_decoder(self) -> MaskDecoder:
        return self.sam_mask_decoder

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        """Side of the square encoder input (1024 for SAM 2.1)."""
        return int(self.image_size)

    @property
    def embedding_size(self) -> tuple[int, int]:
        """``(h, w)`` of the image embedding grid (64 x 64)."""
        return (self.sam_image_embedding_size, self.sam_image_embedding_size)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``(3, S, S)`` or ``(B, 3, S, S)`` pixel values in 0-255 (already stretched to
        ``img_size`` square: no padding) with ImageNet's mean and std."""
        return (x - self.pixel_mean) / self.pixel_std

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """``x (B, 3, S, S)`` normalised -> ``(image_embed (B, C, S/16, S/16), high_res_feats)``,
        what ``SAM2ImagePredictor.set_image`` keeps: the stride-16 map plus ``no_mem_embed`` (with
        ``directly_add_no_mem_embed``) and, with high-res features, the projected stride-4 and
        stride-8 maps ``((B, C/8, S/4, S/4), (B, C/4, S/8, S/8))`` for the decoder (else None)."""
        fpn = self.forward_image(x)["backbone_fpn"]
        image_embed = fpn[-1]
        if self.directly_add_no_mem_embed:
            image_embed = image_embed + self.no_mem_embed.view(1, -1, 1, 1)
        high_res = (fpn[0], fpn[1]) if self.use_high_res_features_in_sam else None
        return image_embed, high_res

    #: SAM2ImagePredictor clamps the low-res logits it returns (after upsampling the masks)
    low_res_limit: float = 32.0

    @property
    def high_res_channels(self) -> tuple[int, ...]:
        """Channels of the high-resolution maps of :meth:`embed` (``(32, 64)``; none without them)."""
        if not self.use_high_res_features_in_sam:
            return ()
        d = self.sam_mask_decoder
        return (int(d.conv_s0.out_channels), int(d.conv_s1.out_channels))

    def decode(
        self,
        features: torch.Tensor,
        image_pe: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        multimask_output: bool,
        high_res: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in model-input pixels -> low-res logits ``(B, C, 4h, 4w)`` and IoUs ``(B, C)``, as
        ``SAM2ImagePredictor._predict``: boxes ``(B, 4)`` become two corner points labelled 2 and 3
        ahead of the clicks, the prompt encoder runs with ``boxes=None`` (so a padding point is
        added), and the decoder sees one image for all ``B`` prompts."""
        if boxes is not None:
            corners = boxes.reshape(-1, 2, 2)
            corner_labels = torch.tensor([2, 3], dtype=torch.int, device=boxes.device).expand(len(corners), 2)
            if points is None:
                points = (corners, corner_labels)
            else:
                points = (torch.cat([corners, points[0]], 1), torch.cat([corner_labels, points[1].to(torch.int)], 1))
        sparse, dense = self.sam_prompt_encoder(points=points, boxes=None, masks=masks)
        batched = sparse.shape[0] > 1
        low_res, iou, _, _ = self.sam_mask_decoder(
            image_embeddings=features, image_pe=image_pe, sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=multimask_output, repeat_image=batched,
            high_res_features=None if high_res is None else list(high_res),
        )
        return low_res, iou


def build_sam2(arch: str = "sam2.1_hiera_large", **overrides: Any) -> Sam2:
    """SAM 2.1 ``arch`` (a key of :data:`SAM21_CONFIGS`) with random weights, in eval mode;
    ``overrides`` replace settings of :class:`Sam2Config` (e.g. ``dynamic_multimask_via_stability``).

    The image encoder, memory attention and memory encoder come from the sibling modules, imported
    here so that this module (and the registry) imports without them."""
    from .image_encoder import build_image_encoder
    from .memory_attention import build_memory_attention
    from .memory_encoder import build_memory_encoder

    try:
        config = SAM21_CONFIGS[arch]
    except KeyError:
        raise ValueError(f"unknown SAM 2.1 architecture {arch!r}; known: {', '.join(SAM21_CONFIGS)}") from None
    config = dataclasses.replace(config, **overrides)
    model = Sam2(build_image_encoder(arch), build_memory_attention(), build_memory_encoder(), **config.model_kwargs())
    model.arch = arch
    return model.eval()


def _matcher(config: Sam2Config) -> Callable[[Mapping[str, Any]], bool]:
    def matches(sd: Mapping[str, Any]) -> bool:
        w = sd.get("image_encoder.trunk.patch_embed.proj.weight")
        return (
            w is not None
            and w.shape[0] == config.trunk_embed_dim
            and _count_blocks(sd, "image_encoder.trunk.blocks.") == sum(config.trunk_stages)
        )

    return matches


for _name, _config in SAM21_CONFIGS.items():
    register_arch(_name, lambda _a=_name, **kw: build_sam2(_a, **kw), _matcher(_config))
