"""Tiny random-weight image-to-video models of both supported families, in the real diffusers folder layout.

`write_tiny_video_models` writes, in a second or two and well under a MB each:

* a Wan 2.2 TI2V-5B-shaped ``WanImageToVideoPipeline``: the Wan 2.2 VAE layout (48 latent channels, a 2×2 patch,
  16× smaller frames, 4× fewer frames), a ``WanTransformer3DModel`` that takes 48 channels, ``expand_timesteps``
  (the picture's latent is the first frame), a UMT5 text encoder, UniPC with flow sigmas;
* an LTX-Video-shaped ``LTXConditionPipeline`` (the class of the distilled 0.9.7 checkpoints): an
  ``AutoencoderKLLTXVideo`` that divides frames by 8 in time as the real one does (so counts are 8k+1), an
  ``LTXVideoTransformer3DModel``, a T5 text encoder, FlowMatchEuler.

Both carry a T5-style tokenizer built here from a character vocabulary (a ``tokenizers`` Unigram model saved as
``T5TokenizerFast``): nothing comes from a hub. Sizes follow diffusers' own tests (``get_dummy_components`` in
tests/pipelines/wan/test_wan_22_image_to_video.py and tests/pipelines/ltx/test_ltx_condition.py). The weights are
random: the models exercise the code paths and file formats, not the motion.
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffusers import LTXConditionPipeline, WanImageToVideoPipeline
    from transformers import T5TokenizerFast

logger = logging.getLogger(__name__)

TEXT_WIDTH = 32  # d_model of both tiny text encoders = the transformers' text / caption width
MAX_SEQUENCE = 64  # tokens; the tiny encoders' relative positions need no absolute limit, the tokenizer does


@dataclass(frozen=True)
class TinyVideoModels:
    """Paths of the tiny image-to-video diffusers folders written by `write_tiny_video_models`."""

    wan_folder: Path
    ltx_folder: Path


def build_tokenizer() -> T5TokenizerFast:
    """A character-level T5 tokenizer: <pad> 0, </s> 1, <unk> 2, then characters with and without the "▁" mark."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    chars = string.ascii_letters + string.digits + string.punctuation
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(char, -3.0) for char in chars] + [("▁" + char, -2.5) for char in chars]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=MAX_SEQUENCE)


def _text_encoder_config(vocab_size: int) -> dict:
    return {"vocab_size": vocab_size, "d_model": TEXT_WIDTH, "d_ff": 37, "d_kv": 8, "num_heads": 4,
            "num_layers": 2, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 32,
            "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}


def build_tiny_wan(seed: int = 0) -> WanImageToVideoPipeline:
    """A tiny Wan 2.2 TI2V-5B-shaped image-to-video pipeline with random weights."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(
            base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
            latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
            scale_factor_spatial=16, scale_factor_temporal=4, temperal_downsample=[False, True, True],
        ).eval()
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=48, out_channels=48,
            text_dim=TEXT_WIDTH, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        ).eval()
        text_encoder = UMT5EncoderModel(UMT5Config(**_text_encoder_config(len(tokenizer)))).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    return WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer,
        transformer_2=None, image_encoder=None, image_processor=None, boundary_ratio=None, expand_timesteps=True,
    )


def build_tiny_ltx(seed: int = 0) -> LTXConditionPipeline:
    """A tiny LTX-Video-shaped image-to-video pipeline (LTXConditionPipeline) with random weights."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXConditionPipeline,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = LTXVideoTransformer3DModel(
            in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4,
            attention_head_dim=8, cross_attention_dim=32, num_layers=1, caption_channels=TEXT_WIDTH,
        ).eval()
        # Three spatio-temporal blocks, as in the real VAE: frames are divided by 8 in time, so counts are 8k+1.
        vae = AutoencoderKLLTXVideo(
            in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, False),
            decoder_spatio_temporal_scaling=(True, True, True, False),
            decoder_inject_noise=(False, False, False, False, False), upsample_residual=(False, False, False, False),
            upsample_factor=(1, 1, 1, 1), timestep_conditioning=False, patch_size=1, patch_size_t=1,
            encoder_causal=True, decoder_causal=False,
        ).eval()
        text_encoder = T5EncoderModel(T5Config(**_text_encoder_config(len(tokenizer)))).eval()
    scheduler = FlowMatchEulerDiscreteScheduler()
    return LTXConditionPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                transformer=transformer)


def write_tiny_video_models(out_dir: Path, seed: int = 0) -> TinyVideoModels:
    """Write both tiny image-to-video pipelines as diffusers folders under out_dir (``wan/`` and ``ltx/``)."""
    out_dir = Path(out_dir)
    models = TinyVideoModels(wan_folder=out_dir / "wan", ltx_folder=out_dir / "ltx")
    build_tiny_wan(seed).save_pretrained(str(models.wan_folder), safe_serialization=True)
    build_tiny_ltx(seed).save_pretrained(str(models.ltx_folder), safe_serialization=True)
    logger.info("wrote tiny image-to-video models to %s", out_dir)
    return models
