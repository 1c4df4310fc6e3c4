"""Tiny configurations of third-party segmentation models, random weights, nothing downloaded.

Used by ``tests/test_thirdparty.py`` and ``benchmarks/thirdparty.py``. Needs the ``thirdparty`` extra
(``pip install -e '.[thirdparty]'``). torchvision from PyPI is a CUDA build whose C extension does not
load beside a CPU torch; timm and transformers import it, and its pure-Python parts work once the
schemas of the ops its extension would register (``torchvision::nms``, ``qnms``) exist: ``prepare()``
defines them before anything imports torchvision.

Limits that are the models' own, and what the export makes of them (numbers in
``benchmarks/results/thirdparty.md``):

- transformers DPT (``DPTForSemanticSegmentation``): the neck reshapes the tokens to a square grid
  (``torch_int(sequence_length**0.5)``); PyTorch raises wherever ``H//16 != W//16``. The capture
  specializes on that grid, and the file takes the traced 8x8 patch grid only (128..143).
- BEiT: the relative position bias table is resized to ``torch_int(2*(H//16) - 1)``: ``int()`` bakes the
  traced grid into the capture; the file takes 128..143, where the grid is the traced one.
- MobileViT: rounds feature maps up to a patch multiple with ``int(math.ceil(...))`` and interpolates
  only when that changes the size: the file takes the sizes whose feature maps round like the trace's.
- Swin backbones (UperNet-Swin, Mask2Former, MaskFormer): pad each stage to a window multiple and
  shift windows only where the stage is larger than the window, both decided in Python: the file
  takes the sizes on which those decisions are the traced ones.
- timm ViT with ``dynamic_img_size``: the patch embedding asserts sides divisible by the patch (16);
  smp DPT checks that too, and its decoder needs an even patch grid (multiples of 32).
- MobileViTV2 (non-overlapping ``unfold``/``fold``), the timm ViT and smp DPT (position embeddings
  resized with ``antialias=True``) export with dynamic height and width through segdeploy's rewrites.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

_NMS = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def prepare() -> None:
    """Define torchvision's native op schemas when its extension cannot load, so that it imports."""
    for name in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{name}", _NMS)
        except RuntimeError:  # already defined (by torchvision's own extension, or an earlier call)
            pass


class Upsampled(nn.Module):
    """A wrapper as users write it: ``self.model``; logits (or class x mask probabilities) at the input's size."""

    def __init__(self, model: nn.Module, masks: bool = False) -> None:
        super().__init__()
        self.model = model
        self.masks = masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        if self.masks:  # MaskFormer / Mask2Former semantic inference
            classes = out.class_queries_logits.softmax(-1)[..., :-1]
            logits = torch.einsum("bqc,bqhw->bchw", classes, out.masks_queries_logits.sigmoid())
        else:
            logits = out.logits
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _swin():
    import transformers as T

    stages = ["stage1", "stage2", "stage3", "stage4"]
    return T.SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, out_features=stages)


def segformer() -> nn.Module:
    import transformers as T

    config = T.SegformerConfig(
        depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 16, 32, 64],
        num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=32, num_labels=5,
    )  # fmt: skip
    return Upsampled(T.SegformerForSemanticSegmentation(config))


def upernet_convnext() -> nn.Module:
    import transformers as T

    backbone = T.ConvNextConfig(
        depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], out_features=["stage1", "stage2", "stage3", "stage4"]
    )
    config = T.UperNetConfig(
        backbone_config=backbone, hidden_size=32, auxiliary_in_channels=32, num_labels=5, use_auxiliary_head=False
    )
    return Upsampled(T.UperNetForSemanticSegmentation(config))


def upernet_swin() -> nn.Module:
    import transformers as T

    config = T.UperNetConfig(
        backbone_config=_swin(), hidden_size=32, auxiliary_in_channels=32, num_labels=5, use_auxiliary_head=False
    )
    return Upsampled(T.UperNetForSemanticSegmentation(config))


def beit() -> nn.Module:
    import transformers as T

    config = T.BeitConfig(
        image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=64, out_indices=[1, 2, 3, 4], use_relative_position_bias=True, num_labels=5,
        use_auxiliary_head=False, pool_scales=[1, 2, 3, 6],
    )  # fmt: skip
    return Upsampled(T.BeitForSemanticSegmentation(config))


def dpt() -> nn.Module:
    import transformers as T

    config = T.DPTConfig(
        image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=64, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16, num_labels=5, use_auxiliary_head=False, head_hidden_size=16,
    )  # fmt: skip
    return Upsampled(T.DPTForSemanticSegmentation(config))


def mobilevit() -> nn.Module:
    import transformers as T

    config = T.MobileViTConfig(
        image_size=64, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], num_labels=5,
        aspp_out_channels=32,
    )  # fmt: skip
    return Upsampled(T.MobileViTForSemanticSegmentation(config))


def mobilevitv2() -> nn.Module:
    import transformers as T

    config = T.MobileViTV2Config(image_size=64, width_multiplier=0.25, num_labels=5, aspp_out_channels=32)
    return Upsampled(T.MobileViTV2ForSemanticSegmentation(config))


def mask2former() -> nn.Module:
    import transformers as T

    config = T.Mask2FormerConfig(
        backbone_config=_swin(), hidden_dim=32, num_queries=8, encoder_layers=1, decoder_layers=2, num_labels=5,
        feature_size=32, mask_feature_size=32, encoder_feedforward_dim=64, dim_feedforward=64, num_attention_heads=2,
    )  # fmt: skip
    return Upsampled(T.Mask2FormerForUniversalSegmentation(config), masks=True)


def maskformer() -> nn.Module:
    import transformers as T

    decoder = dict(
        model_type="detr", d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=8,
    )  # fmt: skip
    config = T.MaskFormerConfig(
        backbone_config=_swin().to_dict(), num_queries=8, num_labels=5, fpn_feature_size=32, mask_feature_size=32,
        decoder_config=decoder,
    )  # fmt: skip
    return Upsampled(T.MaskFormerForInstanceSegmentation(config), masks=True)


class TimmViTSegmenter(nn.Module):
    """A timm ViT backbone that interpolates its position embeddings to the input, and a 1x1 head."""

    def __init__(self) -> None:
        super().__init__()
        import timm

        self.backbone = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=64, dynamic_img_size=True, depth=2, num_classes=0,
            embed_dim=32, num_heads=2,
        )  # fmt: skip
        self.head = nn.Conv2d(32, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_intermediates(x, indices=1, intermediates_only=True)[-1]
        return F.interpolate(self.head(features), size=x.shape[-2:], mode="bilinear", align_corners=False)


def timm_vit() -> nn.Module:
    return TimmViTSegmenter()


def smp_dpt() -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.DPT(encoder_name="tu-vit_tiny_patch16_224", encoder_weights=None, classes=5, dynamic_img_size=True)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "transformers SegFormer": segformer,
    "transformers UperNet-ConvNeXt": upernet_convnext,
    "transformers UperNet-Swin": upernet_swin,
    "transformers BEiT": beit,
    "transformers DPT": dpt,
    "transformers MobileViT": mobilevit,
    "transformers MobileViTV2": mobilevitv2,
    "transformers Mask2Former (semantic)": mask2former,
    "transformers MaskFormer (semantic)": maskformer,
    "timm ViT (dynamic_img_size)": timm_vit,
    "smp DPT": smp_dpt,
}
"""Display name -> builder of a tiny model with random weights (calibrate its BatchNorm before use)."""
