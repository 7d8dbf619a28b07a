"""SDXL's architecture at two sizes, built with random weights by the same functions.

`TINY` is the test suite's SDXL (pipeline.gpu.tiny writes it; a few MB, seconds on a CPU) and `SDXL_BASE` the
published stabilityai/stable-diffusion-xl-base-1.0 architecture (unet/, vae/, text_encoder/, text_encoder_2/
config.json, hard-coded: nothing is downloaded), which benchmarks/gpu_speed.py builds to measure speed, which does
not depend on weight values. Only configurations live here; what is written to disk is the callers' business.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection


@dataclass(frozen=True)
class SdxlSize:
    """Keyword arguments of each SDXL component's constructor (diffusers) or config (transformers' CLIPTextConfig)."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]  # CLIP ViT-L's text tower in SDXL base
    text_encoder_2: dict[str, Any]  # OpenCLIP bigG's, with its projection


def build_unet(size: SdxlSize) -> UNet2DConditionModel:
    """The UNet with random weights, on the current default device."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**size.unet).eval()


def build_vae(size: SdxlSize, **overrides: Any) -> AutoencoderKL:
    """The VAE with random weights (overrides: config keys, e.g. force_upcast)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**{**size.vae, **overrides}).eval()


def build_text_encoders(size: SdxlSize) -> tuple[CLIPTextModel, CLIPTextModelWithProjection]:
    """Both text encoders with random weights: CLIPTextModel, then CLIPTextModelWithProjection."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    return (CLIPTextModel(CLIPTextConfig(**size.text_encoder)).eval(),
            CLIPTextModelWithProjection(CLIPTextConfig(**size.text_encoder_2)).eval())


# -- tiny ---------------------------------------------------------------------------------------------------------


def char_vocab() -> dict[str, int]:
    """The tiny SDXL's char-level CLIP vocabulary: every character alone and with ``</w>``, then the specials."""
    chars = list(string.punctuation) + list(string.digits) + list(string.ascii_lowercase)
    vocab: dict[str, int] = {}
    for char in chars:
        vocab[char] = len(vocab)
    for char in chars:
        vocab[char + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)  # the largest id, as in the real CLIP vocabulary (argmax pooling)
    return vocab


# The two tiny text encoders have different widths on purpose: from_single_file tells them apart by width (with
# equal widths it loads encoder 1's weights into encoder 2).
TINY_TEXT_HIDDEN_1 = 32
TINY_TEXT_HIDDEN_2 = 64
TINY_TEXT_PROJECTION_DIM = 64
TINY_ADDITION_TIME_EMBED_DIM = 8
VAE_SCALING_FACTOR = 0.13025  # SDXL's


def _tiny() -> SdxlSize:
    vocab = char_vocab()
    common = {
        "vocab_size": len(vocab), "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 77,
        "hidden_act": "gelu", "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
        "pad_token_id": vocab["<|endoftext|>"],
    }
    unet = {
        "sample_size": 32, "in_channels": 4, "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "block_out_channels": (32, 64), "layers_per_block": 2, "transformer_layers_per_block": (1, 2),
        "attention_head_dim": (2, 4), "cross_attention_dim": TINY_TEXT_HIDDEN_1 + TINY_TEXT_HIDDEN_2,
        "norm_num_groups": 1, "use_linear_projection": True, "addition_embed_type": "text_time",
        "addition_time_embed_dim": TINY_ADDITION_TIME_EMBED_DIM,
        "projection_class_embeddings_input_dim": 6 * TINY_ADDITION_TIME_EMBED_DIM + TINY_TEXT_PROJECTION_DIM,
    }
    # Four blocks: SDXL's 8× smaller latents. With a 2× VAE the tiny UNet's attention ran on 16 times as many
    # tokens, and a tiny img2img call took ~1.2 s instead of ~0.1 s, most of the test suite's time.
    vae = {
        "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4, "block_out_channels": (16, 32, 64, 64), "layers_per_block": 1,
        "latent_channels": 4, "norm_num_groups": 8, "sample_size": 64, "scaling_factor": VAE_SCALING_FACTOR,
        "force_upcast": True,
    }
    return SdxlSize(
        unet=unet, vae=vae,
        text_encoder={**common, "hidden_size": TINY_TEXT_HIDDEN_1, "intermediate_size": 2 * TINY_TEXT_HIDDEN_1,
                      "projection_dim": TINY_TEXT_HIDDEN_1},
        text_encoder_2={**common, "hidden_size": TINY_TEXT_HIDDEN_2, "intermediate_size": 2 * TINY_TEXT_HIDDEN_2,
                        "projection_dim": TINY_TEXT_PROJECTION_DIM},
    )


TINY = _tiny()

# -- SDXL base 1.0 ------------------------------------------------------------------------------------------------

CLIP_VOCAB_SIZE = 49408
CLIP_BOS_ID, CLIP_EOS_ID = 49406, 49407  # <|startoftext|>, <|endoftext|> (the largest id: argmax pooling)

_CLIP_L: dict[str, Any] = {
    "vocab_size": CLIP_VOCAB_SIZE, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
    "projection_dim": 768, "bos_token_id": 0, "pad_token_id": 1,
    "eos_token_id": 2,  # as published: transformers then pools at argmax(input_ids), i.e. <|endoftext|>
}

SDXL_BASE = SdxlSize(
    unet={
        "sample_size": 128, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
        "flip_sin_to_cos": True, "freq_shift": 0,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "only_cross_attention": False, "block_out_channels": (320, 640, 1280), "layers_per_block": 2,
        "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": 2048,  # 768 (CLIP ViT-L) + 1280 (OpenCLIP bigG) hidden states, concatenated
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),  # diffusers' legacy name: these are the head COUNTS (64-wide heads)
        "use_linear_projection": True, "upcast_attention": None, "resnet_time_scale_shift": "default",
        "time_embedding_type": "positional", "conv_in_kernel": 3, "conv_out_kernel": 3,
        "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,  # 6 size/crop conditions × 256 + 1280 pooled bigG
    },
    vae={
        "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4, "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2, "act_fn": "silu", "latent_channels": 4, "norm_num_groups": 32, "sample_size": 1024,
        "scaling_factor": VAE_SCALING_FACTOR,
        "force_upcast": True,  # SDXL's own VAE overflows in fp16: diffusers runs it in fp32
    },
    text_encoder=_CLIP_L,
    text_encoder_2={**_CLIP_L, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                    "num_attention_heads": 20, "hidden_act": "gelu", "projection_dim": 1280},
)

# Parameter counts of the published SDXL base 1.0 weights.
SDXL_BASE_PARAMS = {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840,
                    "vae": 83_653_863}
