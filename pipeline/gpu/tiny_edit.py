"""A tiny random-weight FLUX.2 [klein] image-editing model, in the real diffusers folder layout.

`write_tiny_edit_model` writes, in well under a second and about a MB, the folder that
``diffusers.Flux2KleinPipeline.from_pretrained(folder)`` loads offline, shaped like black-forest-labs/FLUX.2-klein-4B:

* ``model_index.json`` naming ``Flux2KleinPipeline`` with ``is_distilled: true`` (the 4-step klein, no CFG);
* ``transformer/``: a ``Flux2Transformer2DModel`` (one double- and one single-stream block, no guidance embedding)
  whose ``joint_attention_dim`` is three text-encoder widths, as the real one's 7680 = 3 × 2560; its timestep
  modulation is drawn larger than diffusers' default init so that the prompt and the reference photo visibly
  change the edit (`_strengthen_modulation`);
* ``vae/``: an ``AutoencoderKLFlux2`` with three blocks, so it shrinks pictures 4× (the real one 8×) and a 128×128
  edit with a 128×128 reference photo is 2 × 256 image tokens; its 2×2 latent patches and batch-norm statistics
  are those of the real VAE;
* ``text_encoder/``: a 4-layer ``Qwen3ForCausalLM`` (the real one is Qwen3-4B, 36 layers); the pipeline stacks the
  hidden states of `text_layers` (1, 2, 3) here where the real model uses (9, 18, 27);
* ``tokenizer/``: a byte-level BPE ``Qwen2Tokenizer`` built here with the ``tokenizers`` library (the 256 GPT-2 byte
  symbols, no merges, Qwen's special tokens and a Qwen3-style chat template): nothing comes from a hub;
* ``scheduler/``: FlowMatchEuler with dynamic shifting, as FLUX.2's (the pipeline passes ``mu``);
* ``README.md``: a Hugging Face model card whose front matter carries the licence, as the real models' cards do
  (klein 4B is ``apache-2.0``; klein 9B is ``other`` with ``license_name: flux-non-commercial-license``).

Sizes follow diffusers' own test (``get_dummy_components`` in tests/pipelines/flux2/test_pipeline_flux2_klein.py).
The weights are random: the model exercises the code paths and file formats, not the edit.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pipeline.gpu.edit import text_layers

if TYPE_CHECKING:
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen2TokenizerFast

logger = logging.getLogger(__name__)

TEXT_WIDTH = 16  # hidden size of the tiny Qwen3 text encoder (Qwen3-4B: 2560)
TEXT_LAYERS = 4  # its hidden layers (Qwen3-4B: 36); hidden_states has TEXT_LAYERS + 1 entries
TEXT_LAYER_COUNT = 3  # hidden states the pipeline stacks: joint_attention_dim = TEXT_LAYER_COUNT * TEXT_WIDTH
LATENT_CHANNELS = 4  # VAE latent channels (the real VAE: 32); the transformer sees 2×2 patches of them
VAE_CHANNELS = (8, 8, 8)  # three blocks: the VAE divides each side by 2 ** (3 - 1) = 4
MAX_SEQUENCE = 512  # tokens: the pipeline's default max_sequence_length; RoPE, so only the tokenizer's limit

# Qwen2's pre-tokenizer split (transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX): Qwen2Tokenizer
# rebuilds its pre-tokenizer with it on load, so the saved tokenizer.json uses it too.
QWEN_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 256, 257, 258 after the byte symbols

# Qwen3's chat template, cut down to what the pipeline uses: string contents, add_generation_prompt, and the empty
# think block that enable_thinking=False adds after the assistant header.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

# FLUX.2's scheduler: FLUX.1's shift parameters with dynamic shifting; the klein pipeline computes mu itself
# (compute_empirical_mu), so base/max shift matter only to callers that do not pass one.
SCHEDULER_CONFIG: dict[str, object] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "time_shift_type": "exponential",
}

# The transformer's modules that make its adaLN shifts, scales and gates from the timestep (`_strengthen_modulation`).
MODULATED = ("time_guidance_embed", "modulation", "norm_out")
MODULATION_GAIN = 2.0


TINY_TEXT_LAYERS = text_layers(TEXT_LAYERS, TEXT_LAYER_COUNT)  # (1, 2, 3): pass as text_encoder_out_layers


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 byte values to printable characters (the byte-level BPE alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars, strict=True)}


def build_tokenizer() -> Qwen2TokenizerFast:
    """A byte-level BPE Qwen2 tokenizer: ids 0–255 are the bytes, then <|endoftext|> (pad), <|im_start|> and
    <|im_end|> (eos)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    symbols = _bytes_to_unicode()
    backend = Tokenizer(models.BPE(vocab={symbols[byte]: byte for byte in range(256)}, merges=[]))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    end_of_text, im_start, im_end = SPECIAL_TOKENS
    # As Qwen3's tokenizer_config: a chat turn ends the generation, <|endoftext|> pads, no bos or unk.
    return Qwen2TokenizerFast(tokenizer_object=backend, eos_token=im_end, pad_token=end_of_text, unk_token=None,
                              bos_token=None, additional_special_tokens=[im_start, im_end],
                              chat_template=CHAT_TEMPLATE, model_max_length=MAX_SEQUENCE)


def _strengthen_modulation(transformer: torch.nn.Module, gain: float = MODULATION_GAIN) -> None:
    """Redraw the timestep embedding and adaLN modulation weights at std ``gain / sqrt(fan_in)``.

    FLUX.2's linears have no biases and diffusers' default init shrinks each one (std 1/sqrt(3·fan_in)), so in a
    random model the adaLN gates come out ~0.02: the blocks' attention barely reaches the output, which is then the
    noise passed through, and the prompt and the reference photo change a pixel by a hundredth of a level. With
    gates of order one they change it visibly, so tests can tell that both paths are wired.
    """
    with torch.no_grad():
        for name, module in transformer.named_modules():
            if isinstance(module, torch.nn.Linear) and any(part in name for part in MODULATED):
                module.weight.normal_(0.0, gain / module.in_features**0.5)


def build_tiny_edit(seed: int = 0) -> Flux2KleinPipeline:
    """A tiny FLUX.2 [klein]-shaped image-editing pipeline (Flux2KleinPipeline, distilled) with random weights."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = Flux2Transformer2DModel(
            patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=TEXT_LAYER_COUNT * TEXT_WIDTH, timestep_guidance_channels=256,
            axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
        ).eval()
        _strengthen_modulation(transformer)
        vae = AutoencoderKLFlux2(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
            up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS), block_out_channels=VAE_CHANNELS,
            layers_per_block=1, latent_channels=LATENT_CHANNELS, norm_num_groups=1, sample_size=128,
            use_quant_conv=False, use_post_quant_conv=False,
        ).eval()
        text_encoder = Qwen3ForCausalLM(Qwen3Config(
            vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=16, num_hidden_layers=TEXT_LAYERS,
            num_attention_heads=2, num_key_value_heads=2, head_dim=TEXT_WIDTH // 2,
            max_position_embeddings=MAX_SEQUENCE, rope_theta=1_000_000.0, tie_word_embeddings=True,
            bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,  # Qwen3-4B: 151643, 151645
        )).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)
    return Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer, is_distilled=True)


def model_card(licence: str, licence_name: str = "") -> str:
    """A Hugging Face model card (README.md) whose YAML front matter gives the licence."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(license=licence, license_name=licence_name or None, library_name="diffusers",
                         pipeline_tag="image-to-image", tags=["flux2", "flux2-klein", "tiny", "random-weights"])
    return (f"---\n{data.to_yaml()}\n---\n\n# Tiny FLUX.2 [klein]\n\n"
            "Random weights in the FLUX.2 [klein] diffusers layout (Flux2KleinPipeline), written by claybot's "
            "pipeline.gpu.tiny_edit for offline tests. It exercises code paths and file formats; it does not edit.\n")


def write_tiny_edit_model(folder: Path, *, seed: int = 0, licence: str = "apache-2.0", licence_name: str = "") -> Path:
    """Write the tiny FLUX.2 [klein] pipeline as a diffusers folder with a model card; return the folder."""
    folder = Path(folder)
    build_tiny_edit(seed).save_pretrained(str(folder), safe_serialization=True)
    (folder / "README.md").write_text(model_card(licence, licence_name), encoding="utf-8")
    logger.info("wrote tiny FLUX.2 [klein] model to %s", folder)
    return folder


# diffusers' Flux2Transformer2DModel names → BFL's release layout (flux-2-klein-4b.safetensors), the inverse of
# diffusers' convert_flux2_transformer_checkpoint_to_diffusers: what a single-file edit model holds.
_BFL_TOP = {
    "x_embedder.weight": "img_in.weight", "context_embedder.weight": "txt_in.weight",
    "time_guidance_embed.timestep_embedder.linear_1.weight": "time_in.in_layer.weight",
    "time_guidance_embed.timestep_embedder.linear_2.weight": "time_in.out_layer.weight",
    "double_stream_modulation_img.linear.weight": "double_stream_modulation_img.lin.weight",
    "double_stream_modulation_txt.linear.weight": "double_stream_modulation_txt.lin.weight",
    "single_stream_modulation.linear.weight": "single_stream_modulation.lin.weight",
    "proj_out.weight": "final_layer.linear.weight",
}
_BFL_DOUBLE = {
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale", "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.to_out.0.weight": "img_attn.proj.weight", "ff.linear_in.weight": "img_mlp.0.weight",
    "ff.linear_out.weight": "img_mlp.2.weight", "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale", "attn.to_add_out.weight": "txt_attn.proj.weight",
    "ff_context.linear_in.weight": "txt_mlp.0.weight", "ff_context.linear_out.weight": "txt_mlp.2.weight",
}
_BFL_QKV = {"img": ("to_q", "to_k", "to_v"), "txt": ("add_q_proj", "add_k_proj", "add_v_proj")}
_BFL_SINGLE = {"attn.to_qkv_mlp_proj.weight": "linear1.weight", "attn.to_out.weight": "linear2.weight",
               "attn.norm_q.weight": "norm.query_norm.scale", "attn.norm_k.weight": "norm.key_norm.scale"}


def bfl_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers Flux2Transformer2DModel state dict in BFL's single-file layout (fused QKV, shift-then-scale)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _BFL_TOP:
            out[_BFL_TOP[key]] = value
        elif key == "norm_out.linear.weight":  # diffusers keeps (scale, shift), BFL (shift, scale)
            scale, shift = value.chunk(2, dim=0)
            out["final_layer.adaLN_modulation.1.weight"] = torch.cat([shift, scale])
        elif match := re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", key):
            block, rest = match.groups()
            if rest in _BFL_DOUBLE:
                out[f"double_blocks.{block}.{_BFL_DOUBLE[rest]}"] = value
            for side, names in _BFL_QKV.items():
                if rest == f"attn.{names[0]}.weight":
                    out[f"double_blocks.{block}.{side}_attn.qkv.weight"] = torch.cat(
                        [state[f"transformer_blocks.{block}.attn.{name}.weight"] for name in names])
        elif match := re.fullmatch(r"single_transformer_blocks\.(\d+)\.(.+)", key):
            block, rest = match.groups()
            out[f"single_blocks.{block}.{_BFL_SINGLE[rest]}"] = value
        else:
            raise KeyError(f"no BFL name for {key}")
    return out


def write_tiny_edit_single_file(folder: Path, path: Path) -> Path:
    """The tiny model's transformer (``folder``, written by ``write_tiny_edit_model``) as one BFL-layout
    .safetensors file at ``path``, as black-forest-labs release klein's (the rest of the pipeline: ``folder``)."""
    from diffusers import Flux2Transformer2DModel
    from safetensors.torch import save_file

    transformer = Flux2Transformer2DModel.from_pretrained(str(Path(folder) / "transformer"))
    state = {name: tensor.contiguous() for name, tensor in bfl_state_dict(transformer.state_dict()).items()}
    save_file(state, str(path))
    return Path(path)
