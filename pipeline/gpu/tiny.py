"""Tiny random-weight models of the real claybot architectures, in the real on-disk formats.

`write_tiny_models` writes, in a few seconds and a few MB, everything the bot needs to run offline:

* an SDXL img2img pipeline (UNet2DConditionModel, AutoencoderKL, CLIPTextModel + CLIPTextModelWithProjection,
  two char-level CLIP tokenizers, SDXL base's EulerDiscreteScheduler) saved as a diffusers folder;
* the same weights as ONE ``.safetensors`` checkpoint in the original SDXL (A1111/ComfyUI, "sgm") key layout, which
  ``StableDiffusionXLImg2ImgPipeline.from_single_file(path, config=<diffusers folder>)`` loads;
* a random rank-4 "clay" LoRA in the kohya/A1111 format (sgm UNet names such as
  ``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``, plus ``lora_te1_``/``lora_te2_``) and the same
  weights in the diffusers/PEFT format (alpha folded into ``lora_B``);
* a random rank-4 "speed" LoRA in the kohya format on the UNet only, as the few-step distillation LoRAs
  (SDXL-Lightning, Hyper-SD, LCM-LoRA) are, for the ``[speed.fast]`` preset;
* the guides' models (pipeline.gpu.tiny_guides): a ControlNet, a Depth Anything model, an IP-Adapter "plus" with
  its CLIP image encoder and an UltraFace-shaped ONNX face detector;
* a WD14-shaped ONNX tagger (``model.onnx`` + ``selected_tags.csv``, SmilingWolf layout) whose tag probabilities are
  ``sigmoid(W[:, i] . mean_bgr / 255 + b[i])``, so tests can compute them from the initializers.

The weights are random: the models exercise the code paths and file formats, not picture quality.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.gpu.architectures import TINY, build_text_encoders, build_unet, build_vae, char_vocab

if TYPE_CHECKING:
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTokenizer

logger = logging.getLogger(__name__)

LORA_RANK = 4
LORA_ALPHA = 2.0
# Standard deviation of the random lora_up weights (before the alpha / rank scale): large enough that the LoRA
# visibly changes a tiny img2img result.
LORA_UP_STD = 1.0

SDXL_SCHEDULER_CONFIG: dict[str, object] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "timestep_spacing": "leading",
    "steps_offset": 1,
}

# WD14 selected_tags.csv rows: (name, category). Category 9 = rating, 0 = general, 4 = character.
RATING_TAGS = ["general", "sensitive", "questionable", "explicit"]
# (weights for the mean B, G, R in 0–1, bias) of each rating's logit: "explicit" = 20·(R − (G + B)/2) − 14.
RATING_WEIGHTS = {
    "general": ((3.0, 3.0, -6.0), 3.0),
    "sensitive": ((0.0, 0.0, 0.0), -6.0),
    "questionable": ((0.0, 0.0, 0.0), -6.0),
    "explicit": ((-10.0, -10.0, 20.0), -14.0),
}
GENERAL_TAGS = """
    1girl 1boy solo smile open_mouth looking_at_viewer outdoors indoors day sky blue_sky cloud tree grass flower
    water building city dog cat animal no_humans long_hair short_hair brown_hair black_hair blue_eyes brown_eyes
    shirt red_shirt jacket glasses hat upper_body portrait realistic photorealistic photo_(medium) food cup car
    sweater_vest star_(symbol) heart_(symbol)
""".split()
CHARACTER_TAGS = ["hatsune_miku", "pikachu", "kirby", "link_(zelda)"]
# Tags whose bias is pinned high so they are detected on every image (the default claybot style drops the photo
# tags, so tests need them present) and low so they never are.
ALWAYS_GENERAL = ("realistic", "photorealistic", "photo_(medium)", "solo")
NEVER_GENERAL = ("1boy", "car")
ALWAYS_CHARACTER = ("hatsune_miku", "kirby")


@dataclass(frozen=True)
class TinyModels:
    """Paths of the tiny models written by `write_tiny_models`."""

    sdxl_folder: Path
    sdxl_single_file: Path
    lora_kohya: Path
    lora_diffusers: Path
    tagger_folder: Path
    speed_lora: Path
    controlnet_folder: Path | None = None  # the guides' models (pipeline.gpu.guides)
    depth_folder: Path | None = None
    ip_adapter: Path | None = None
    image_encoder_folder: Path | None = None
    face_detector: Path | None = None


# --------------------------------------------------------------------------------------------------------------
# SDXL components
# --------------------------------------------------------------------------------------------------------------


def _write_tokenizer(folder: Path, pad_token: str) -> None:
    """Write a char-level CLIPTokenizer (vocab.json, merges.txt and the transformers files) to folder."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(char_vocab(), ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    # model_max_length MUST be set: without it encoding fails with "OverflowError: int too big to convert".
    tokenizer = CLIPTokenizer(
        vocab=str(folder / "vocab.json"),
        merges=str(folder / "merges.txt"),
        model_max_length=77,
        pad_token=pad_token,
    )
    tokenizer.save_pretrained(str(folder))


def _load_tokenizer(folder: Path) -> CLIPTokenizer:
    """Load a tokenizer written by `_write_tokenizer`."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


def _build_tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLImg2ImgPipeline:
    """Build the tiny random-weight StableDiffusionXLImg2ImgPipeline in memory."""
    import tempfile

    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = build_unet(TINY)
        vae = build_vae(TINY)
        text_encoder, text_encoder_2 = build_text_encoders(TINY)
    with tempfile.TemporaryDirectory() as tmp:
        _write_tokenizer(Path(tmp) / "tokenizer", pad_token="<|endoftext|>")
        _write_tokenizer(Path(tmp) / "tokenizer_2", pad_token="!")  # SDXL's second tokenizer pads with "!"
        tokenizer = _load_tokenizer(Path(tmp) / "tokenizer")
        tokenizer_2 = _load_tokenizer(Path(tmp) / "tokenizer_2")
    scheduler = EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG)
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        requires_aesthetics_score=False,
    )


# --------------------------------------------------------------------------------------------------------------
# Original SDXL ("sgm") key layout
# --------------------------------------------------------------------------------------------------------------

_UNET_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _unet_name_to_sgm(name: str, unet_config: dict) -> str:
    """Map a diffusers UNet parameter or module name to the original SDXL (sgm) name, for this UNet's config."""
    layers = int(unet_config["layers_per_block"])
    per_block = layers + 1
    parts = name.split(".")
    for diffusers_prefix, sgm_prefix in _UNET_TOP_LEVEL.items():
        if name == diffusers_prefix or name.startswith(diffusers_prefix + "."):
            return sgm_prefix + name[len(diffusers_prefix) :]

    def resnet(rest: list[str]) -> list[str]:
        return [_UNET_RESNET.get(rest[0], rest[0]), *rest[1:]] if rest else rest

    if parts[0] == "down_blocks":
        block, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":  # down_blocks.B.downsamplers.0.conv.* -> input_blocks.N.0.op.*
            index = 1 + block * per_block + layers
            return ".".join([f"input_blocks.{index}.0.op", *parts[5:]])
        index = 1 + block * per_block + int(parts[3])
        if kind == "resnets":
            return ".".join([f"input_blocks.{index}.0", *resnet(parts[4:])])
        if kind == "attentions":
            return ".".join([f"input_blocks.{index}.1", *parts[4:]])
    elif parts[0] == "mid_block":
        if parts[1] == "resnets":
            return ".".join([f"middle_block.{2 * int(parts[2])}", *resnet(parts[3:])])
        if parts[1] == "attentions":
            return ".".join(["middle_block.1", *parts[3:]])
    elif parts[0] == "up_blocks":
        block, kind = int(parts[1]), parts[2]
        if kind == "upsamplers":  # up_blocks.B.upsamplers.0.conv.* -> output_blocks.N.{1|2}.conv.*
            index = block * per_block + layers
            has_attention = str(unet_config["up_block_types"][block]).startswith("CrossAttn")
            return ".".join([f"output_blocks.{index}.{2 if has_attention else 1}.conv", *parts[5:]])
        index = block * per_block + int(parts[3])
        if kind == "resnets":
            return ".".join([f"output_blocks.{index}.0", *resnet(parts[4:])])
        if kind == "attentions":
            return ".".join([f"output_blocks.{index}.1", *parts[4:]])
    raise ValueError(f"no original SDXL name for UNet key {name!r}")


_VAE_TOP_LEVEL = {"conv_norm_out": "norm_out"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}


def _vae_name_to_sgm(name: str, vae_config: dict) -> str:
    """Map a diffusers AutoencoderKL parameter name to the original (ldm) name (without first_stage_model.)."""
    parts = name.split(".")
    if parts[0] in ("quant_conv", "post_quant_conv"):
        return name
    side, rest = parts[0], parts[1:]  # encoder / decoder
    num_up = len(vae_config["up_block_types"])

    def resnet(tail: list[str]) -> list[str]:
        return ["nin_shortcut" if tail[0] == "conv_shortcut" else tail[0], *tail[1:]]

    if rest[0] in ("conv_in", "conv_out"):
        out = rest
    elif rest[0] in _VAE_TOP_LEVEL:
        out = [_VAE_TOP_LEVEL[rest[0]], *rest[1:]]
    elif rest[0] == "down_blocks":
        block = rest[1]
        if rest[2] == "resnets":
            out = ["down", block, "block", rest[3], *resnet(rest[4:])]
        else:  # downsamplers.0.conv.*
            out = ["down", block, "downsample", *rest[4:]]
    elif rest[0] == "up_blocks":
        block = str(num_up - 1 - int(rest[1]))  # the original decoder counts up blocks from the bottom
        if rest[2] == "resnets":
            out = ["up", block, "block", rest[3], *resnet(rest[4:])]
        else:  # upsamplers.0.conv.*
            out = ["up", block, "upsample", *rest[4:]]
    elif rest[0] == "mid_block":
        if rest[1] == "resnets":
            out = ["mid", f"block_{int(rest[2]) + 1}", *resnet(rest[3:])]
        else:  # attentions.0.<to_q|...|to_out.0|group_norm>.*
            tail = rest[3:]
            if tail[0] == "to_out":
                tail = tail[1:]  # drop the ".0" of to_out.0
                tail[0] = "proj_out"
            else:
                tail = [_VAE_ATTENTION[tail[0]], *tail[1:]]
            out = ["mid", "attn_1", *tail]
    else:
        raise ValueError(f"no original SDXL name for VAE key {name!r}")
    return ".".join([side, *out])


def _open_clip_state_dict(text_encoder_2_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert CLIPTextModelWithProjection weights to the open_clip layout of SDXL's second text encoder."""
    state = {k.removeprefix("text_model."): v for k, v in text_encoder_2_state.items()}
    out: dict[str, torch.Tensor] = {
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
        # open_clip multiplies x @ text_projection, so it stores the transposed Linear weight
        "text_projection": state.pop("text_projection.weight").T.contiguous(),
        "logit_scale": torch.tensor(math.log(1 / 0.07)),
    }
    layer_ids = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for i in layer_ids:
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [state.pop(f"{src}self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")]
            )
            out[f"{dst}attn.out_proj.{kind}"] = state.pop(f"{src}self_attn.out_proj.{kind}")
            out[f"{dst}ln_1.{kind}"] = state.pop(f"{src}layer_norm1.{kind}")
            out[f"{dst}ln_2.{kind}"] = state.pop(f"{src}layer_norm2.{kind}")
            out[f"{dst}mlp.c_fc.{kind}"] = state.pop(f"{src}mlp.fc1.{kind}")
            out[f"{dst}mlp.c_proj.{kind}"] = state.pop(f"{src}mlp.fc2.{kind}")
    if state:
        raise ValueError(f"unconverted text_encoder_2 keys: {sorted(state)}")
    return out


def _sdxl_single_file_state_dict(pipe: StableDiffusionXLImg2ImgPipeline) -> dict[str, torch.Tensor]:
    """Return the pipeline's weights in the original SDXL single-file key layout."""
    out: dict[str, torch.Tensor] = {}
    unet_config = dict(pipe.unet.config)
    for key, value in pipe.unet.state_dict().items():
        out["model.diffusion_model." + _unet_name_to_sgm(key, unet_config)] = value
    vae_config = dict(pipe.vae.config)
    for key, value in pipe.vae.state_dict().items():
        if key.split(".")[1:3] == ["mid_block", "attentions"] and value.ndim == 2:
            value = value[:, :, None, None]  # the original VAE attention uses 1x1 convolutions
        out["first_stage_model." + _vae_name_to_sgm(key, vae_config)] = value
    for key, value in pipe.text_encoder.state_dict().items():
        # transformers 5 dropped the text_model. prefix from CLIPTextModel's keys; the original layout has it.
        key = key if key.startswith("text_model.") else "text_model." + key
        out["conditioner.embedders.0.transformer." + key] = value
    for key, value in _open_clip_state_dict(pipe.text_encoder_2.state_dict()).items():
        out["conditioner.embedders.1.model." + key] = value
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


# --------------------------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------------------------

_ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
_TEXT_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _lora_targets(pipe: StableDiffusionXLImg2ImgPipeline) -> list[tuple[str, str, torch.nn.Linear]]:
    """List (component, diffusers module name, module) for every layer the clay LoRA adapts."""
    targets: list[tuple[str, str, torch.nn.Linear]] = []
    for name, module in pipe.unet.named_modules():
        if ".transformer_blocks." in name and name.endswith(_ATTENTION_PROJECTIONS):
            if isinstance(module, torch.nn.Linear):
                targets.append(("unet", name, module))
    for component in ("text_encoder", "text_encoder_2"):
        for name, module in getattr(pipe, component).named_modules():
            if ".self_attn." in name and name.endswith(_TEXT_PROJECTIONS) and isinstance(module, torch.nn.Linear):
                name = name if name.startswith("text_model.") else "text_model." + name
                targets.append((component, name, module))
    return targets


def _kohya_name(component: str, module_name: str, unet_config: dict) -> str:
    """Return the kohya/A1111 LoRA module name (sgm UNet names, as real kohya SDXL LoRAs use)."""
    if component == "unet":
        return "lora_unet_" + _unet_name_to_sgm(module_name, unet_config).replace(".", "_")
    prefix = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}[component]
    return prefix + module_name.replace(".", "_")


def _lora_state_dicts(
    pipe: StableDiffusionXLImg2ImgPipeline, seed: int = 0
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Return the random clay LoRA as (kohya state dict, diffusers/PEFT state dict) holding the same weights."""
    kohya: dict[str, torch.Tensor] = {}
    peft: dict[str, torch.Tensor] = {}
    unet_config = dict(pipe.unet.config)
    generator = torch.Generator().manual_seed(seed + 1)
    for component, name, module in _lora_targets(pipe):
        down = torch.randn(LORA_RANK, module.in_features, generator=generator) / math.sqrt(module.in_features)
        up = torch.randn(module.out_features, LORA_RANK, generator=generator) * LORA_UP_STD
        kohya_name = _kohya_name(component, name, unet_config)
        kohya[f"{kohya_name}.lora_down.weight"] = down
        kohya[f"{kohya_name}.lora_up.weight"] = up
        kohya[f"{kohya_name}.alpha"] = torch.tensor(LORA_ALPHA)
        # diffusers/PEFT files carry no alpha: PEFT then uses scale 1, so fold alpha / rank into lora_B.
        peft[f"{component}.{name}.lora_A.weight"] = down.clone()
        peft[f"{component}.{name}.lora_B.weight"] = up * (LORA_ALPHA / LORA_RANK)
    return kohya, peft


def _speed_lora_state_dict(pipe: StableDiffusionXLImg2ImgPipeline, seed: int = 0) -> dict[str, torch.Tensor]:
    """Return a random UNet-only LoRA in the kohya format (a stand-in for a few-step distillation LoRA)."""
    kohya: dict[str, torch.Tensor] = {}
    unet_config = dict(pipe.unet.config)
    generator = torch.Generator().manual_seed(seed + 1000)
    for component, name, module in _lora_targets(pipe):
        if component != "unet":
            continue
        kohya_name = _kohya_name(component, name, unet_config)
        kohya[f"{kohya_name}.lora_down.weight"] = (
            torch.randn(LORA_RANK, module.in_features, generator=generator) / math.sqrt(module.in_features))
        kohya[f"{kohya_name}.lora_up.weight"] = (
            torch.randn(module.out_features, LORA_RANK, generator=generator) * LORA_UP_STD)
        kohya[f"{kohya_name}.alpha"] = torch.tensor(LORA_ALPHA)
    return kohya


# --------------------------------------------------------------------------------------------------------------
# WD14 tagger
# --------------------------------------------------------------------------------------------------------------


def _tagger_rows() -> list[tuple[str, int]]:
    """Return the (name, category) rows of the tiny tagger's selected_tags.csv, in output order."""
    return (
        [(name, 9) for name in RATING_TAGS]
        + [(name, 0) for name in GENERAL_TAGS]
        + [(name, 4) for name in CHARACTER_TAGS]
    )


def write_tiny_tagger(folder: Path, seed: int = 0, input_size: int = 32) -> Path:
    """Write a WD14-shaped ONNX tagger (model.onnx + selected_tags.csv) to folder and return folder."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = _tagger_rows()
    n = len(rows)
    rng = np.random.default_rng(seed)
    weight = np.zeros((3, n), dtype=np.float32)
    bias = np.zeros(n, dtype=np.float32)
    for i, (name, category) in enumerate(rows):
        if category == 4:  # characters: small colour dependence
            weight[:, i] = rng.normal(0.0, 0.3, 3)
            bias[i] = 3.5 if name in ALWAYS_CHARACTER else -4.0
        elif name in ALWAYS_GENERAL:
            weight[:, i] = rng.normal(0.0, 0.3, 3)
            bias[i] = 3.0
        elif name in NEVER_GENERAL:
            weight[:, i] = rng.normal(0.0, 0.3, 3)
            bias[i] = -5.0
        else:  # general tags and ratings: colour-dependent, some above 0.35 and some below
            weight[:, i] = rng.normal(0.0, 2.0, 3)
            bias[i] = rng.uniform(-6.0, 0.5)
    # Ratings follow how red the image is (the input is BGR), so tests of the SFW gate can pick one: a pure red
    # square is rated explicit; ordinary photos (and the tiny SDXL's outputs) general.
    for i, (name, _) in enumerate(rows[: len(RATING_TAGS)]):
        weight[:, i], bias[i] = RATING_WEIGHTS[name]

    nodes = [
        helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("ReduceMean", ["nchw"], ["mean"], axes=[2, 3], keepdims=0),
        helper.make_node("Div", ["mean", "scale"], ["unit"]),
        helper.make_node("MatMul", ["unit", "W"], ["matmul"]),
        helper.make_node("Add", ["matmul", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_wd14_tagger",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", input_size, input_size, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", n])],
        initializer=[
            numpy_helper.from_array(np.array(255.0, dtype=np.float32), "scale"),
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(bias, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="claybot-tiny")
    model.ir_version = 10  # onnx 1.23 writes IR 14, which onnxruntime 1.31/1.32 refuse
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))

    with (folder / "selected_tags.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, (name, category) in enumerate(rows):
            writer.writerow([100000 + i, name, category, 1000000 // (i + 1)])
    logger.debug("wrote tiny tagger with %d tags to %s", n, folder)
    return folder


# --------------------------------------------------------------------------------------------------------------
# Everything
# --------------------------------------------------------------------------------------------------------------


def write_tiny_models(out_dir: Path, seed: int = 0) -> TinyModels:
    """Write the tiny SDXL folder, single-file checkpoint, both LoRA files, the speed LoRA and the tagger."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = _build_tiny_sdxl_pipeline(seed)
    models = TinyModels(
        sdxl_folder=out_dir / "sdxl",
        sdxl_single_file=out_dir / "sdxl.safetensors",
        lora_kohya=out_dir / "clay_lora_kohya.safetensors",
        lora_diffusers=out_dir / "clay_lora_diffusers.safetensors",
        tagger_folder=out_dir / "wd14",
        speed_lora=out_dir / "speed_lora_kohya.safetensors",
    )
    pipe.save_pretrained(str(models.sdxl_folder), safe_serialization=True)
    # transformers 5 saves only tokenizer.json; also keep the classic vocab.json + merges.txt files.
    _write_tokenizer(models.sdxl_folder / "tokenizer", pad_token="<|endoftext|>")
    _write_tokenizer(models.sdxl_folder / "tokenizer_2", pad_token="!")

    save_file(_sdxl_single_file_state_dict(pipe), str(models.sdxl_single_file), metadata={"format": "pt"})
    kohya, peft = _lora_state_dicts(pipe, seed)
    lora_metadata = {
        "format": "pt",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(LORA_RANK),
        "ss_network_alpha": str(LORA_ALPHA),
        "ss_base_model_version": "sdxl_base_v1-0",
    }
    save_file(kohya, str(models.lora_kohya), metadata=lora_metadata)
    save_file(peft, str(models.lora_diffusers), metadata={"format": "pt"})
    save_file(_speed_lora_state_dict(pipe, seed), str(models.speed_lora), metadata=lora_metadata)
    write_tiny_tagger(models.tagger_folder, seed=seed)
    from pipeline.gpu import tiny_guides

    guides = tiny_guides.write_tiny_guides(out_dir, pipe.unet, seed=seed)
    models = dataclasses.replace(models, **guides)
    logger.info("wrote tiny models to %s", out_dir)
    return models
