"""The benchmarks' models and configs: full-size SDXL + WD14 with random weights, or pipeline.gpu.tiny's models.

SDXL's architecture at both sizes comes from pipeline.gpu.architectures (the test suite's tiny SDXL and the
published SDXL base are built by the same functions). This module writes them to disk the way the benchmarks need:
full size in float16 with a word-level tokenizer, a WD14 ViT-B/16 tagger exported to ONNX and random LoRAs, built
once into a folder and reused; and the claybot config and photo every benchmark runs with.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import re
import shutil
import string
import tempfile
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.gpu.architectures import (
    CLIP_BOS_ID,
    CLIP_EOS_ID,
    CLIP_VOCAB_SIZE,
    SDXL_BASE,
    SDXL_BASE_PARAMS,
    build_text_encoders,
    build_unet,
    build_vae,
)

if TYPE_CHECKING:
    from pipeline.gpu.tiny import TinyModels

ROOT = Path(__file__).resolve().parent.parent

# madebyollin/sdxl-vae-fp16-fix (config.toml's pipeline.vae): the same architecture, weights that stay finite in
# fp16, so diffusers does not upcast it. Random weights: only the config differs from the base VAE here.
VAE_FP16_FIX_OVERRIDES = {"force_upcast": False}

# WD14 (SmilingWolf/wd-vit-tagger-v3): a ViT-B/16 at 448 px with a sigmoid head over 10,861 tags.
WD14_INPUT_SIZE = 448
WD14_N_TAGS = 10_861
WD14_N_GENERAL = 8_000
WD14_VIT_CONFIG: dict[str, Any] = {
    "image_size": WD14_INPUT_SIZE,
    "patch_size": 16,
    "num_channels": 3,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-6,
}

# What a WD14 tagger typically finds on a head-and-shoulders photo (34 tags; after the clay style drops the
# "realistic"/"photo" ones, 30 = tagger.max_tags remain). The random tagger is biased to find exactly these, so
# the prompt has the length of a real one.
PHOTO_TAGS = (
    "1girl", "solo", "realistic", "photorealistic", "photo_(medium)", "blurry", "long_hair", "looking_at_viewer",
    "smile", "brown_hair", "brown_eyes", "outdoors", "upper_body", "shirt", "blurry_background", "day", "lips",
    "white_shirt", "closed_mouth", "depth_of_field", "tree", "jewelry", "earrings", "sunlight", "parted_lips",
    "teeth", "nose", "short_sleeves", "collarbone", "t-shirt", "portrait", "building", "standing", "sky",
)


SWITCHES = ("fuse_qkv", "channels_last", "compile", "resolution_buckets")
# The full-size [speed.fast]: SDXL-Lightning's settings (its 4-step LoRA is rank 64 on the UNet).
FAST_PRESET = {"lora_scale": 1.0, "scheduler": "euler_trailing", "guidance_scale": 0.0, "steps": 4}
SPEED_LORA_RANK = 64

BUILD_VERSION = 1  # bump when what write_full_models writes changes, so cached models are rebuilt


def meta_param_counts() -> dict[str, dict[str, float]]:
    """Build every full-size component on the meta device (no memory, no init) and count its parameters."""
    with torch.device("meta"):
        unet, vae = build_unet(SDXL_BASE), build_vae(SDXL_BASE)
        text_encoder, text_encoder_2 = build_text_encoders(SDXL_BASE)
    counts = {}
    for name, module in (("unet", unet), ("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2),
                         ("vae", vae)):
        n = sum(p.numel() for p in module.parameters())
        counts[name] = {"params": n, "published": SDXL_BASE_PARAMS[name],
                        "rel_diff": n / SDXL_BASE_PARAMS[name] - 1.0}
    return counts


# -- a word-level CLIP tokenizer ---------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W\d_]+")  # letter runs: the words CLIP's pre-tokenizer cuts text into


def words_of(texts: Iterable[str]) -> list[str]:
    """Distinct lower-case letter words in texts, in first-seen order."""
    seen: dict[str, None] = {}
    for text in texts:
        for word in _WORD.findall(text.lower()):
            seen.setdefault(word, None)
    return list(seen)


def write_word_tokenizer(folder: Path, words: Iterable[str], *, pad_token: str) -> None:
    """A CLIPTokenizer whose vocabulary holds each given word whole, so each costs ONE token, as in real CLIP.

    The real CLIP BPE vocabulary (49,408 tokens) cannot be downloaded here. A char-level tokenizer (as in
    pipeline.gpu.tiny) would spend one token per character: a 30-tag prompt would become ~300 tokens instead of ~90,
    i.e. five 77-token chunks instead of two, and the UNet's cross-attention would attend to ~385 keys instead of
    154 — a slower, wrong benchmark. Real CLIP keeps common tag words (hair, eyes, smile, shirt…) whole and splits
    digits and punctuation exactly as this tokenizer does (same pre-tokenizer), so the counts agree closely; a rare
    word (e.g. "claymation") may be 2 tokens in real CLIP and 1 here.

    BPE needs merges to build each word from its characters. They are chained from the END of the word: the last
    character carries ``</w>``, and every merge is (character, a word ending with ``</w>``), so at each step exactly
    one merge applies and every listed word ends as a single token, whatever the other words are.
    """
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for char in string.printable.strip():
        add(char)
        add(char + "</w>")
    merges: dict[tuple[str, str], None] = {}
    for word in words:
        suffix = word[-1] + "</w>"
        add(suffix)
        for char in reversed(word[:-1]):
            merges.setdefault((char, suffix), None)
            suffix = char + suffix
            add(suffix)
    if len(vocab) > CLIP_BOS_ID:
        raise ValueError(f"{len(vocab)} tokens do not fit CLIP's vocabulary of {CLIP_VOCAB_SIZE}")
    vocab["<|startoftext|>"] = CLIP_BOS_ID
    vocab["<|endoftext|>"] = CLIP_EOS_ID
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                       encoding="utf-8")
    # model_max_length MUST be given, or encoding fails with "OverflowError: int too big to convert".
    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                              model_max_length=77, pad_token=pad_token)
    tokenizer.save_pretrained(str(folder))


# -- the WD14 tagger ---------------------------------------------------------------------------------------------

_ADJECTIVES = """red orange yellow green blue purple pink white black grey brown silver gold striped checkered
    dotted long short large small open closed torn wet round pointy frilled layered plaid fur leather lace
    sleeveless hooded high low bare crossed""".split()
_NOUNS = """hair eyes shirt dress skirt jacket coat hat ribbon bow gloves boots shoes socks scarf necktie collar
    sleeves belt bag umbrella flower tree sky cloud water sea river building window door chair table cup book
    phone car bicycle dog cat bird fish horse wings tail horns ears mouth teeth hand fingers legs background
    border frame light shadow""".split()
_SYLLABLES = "ka ri to mi na sa ha yu ko ne ro shi ta ki ru mo a e i o u".split()


def wd14_tag_rows(n_tags: int = WD14_N_TAGS, n_general: int = WD14_N_GENERAL) -> list[tuple[str, int]]:
    """(name, category) rows of a selected_tags.csv: 4 ratings (9), general tags (0), character tags (4).

    PHOTO_TAGS come first among the general tags; the rest are made-up but tag-shaped names.
    """
    rows = [(name, 9) for name in ("general", "sensitive", "questionable", "explicit")]
    general = list(PHOTO_TAGS)
    taken = set(general)
    for adjective_2 in ["", *_ADJECTIVES]:
        for adjective in _ADJECTIVES:
            for noun in _NOUNS:
                name = "_".join(w for w in (adjective_2, adjective, noun) if w)
                if len(general) < n_general and name not in taken and adjective_2 != adjective:
                    general.append(name)
                    taken.add(name)
    rows += [(name, 0) for name in general]
    n_characters = n_tags - len(rows)
    s = len(_SYLLABLES)
    for i in range(n_characters):
        first = _SYLLABLES[i % s] + _SYLLABLES[(i // s) % s] + _SYLLABLES[(i // s // s) % s]
        rows.append((f"{first}_({_SYLLABLES[(i * 7) % s]}{_SYLLABLES[(i * 3) % s]}_series)", 4))
    return rows


def write_wd14_vit_tagger(folder: Path, *, seed: int = 0, input_size: int = WD14_INPUT_SIZE,
                          rows: list[tuple[str, int]] | None = None) -> Path:
    """A full-size WD14-architecture tagger in the SmilingWolf layout: model.onnx + selected_tags.csv.

    transformers' ViTModel (ViT-B/16 at input_size px, random weights) → token mean → linear → sigmoid, with the
    real taggers' input convention inside the graph: NHWC, float32, BGR, 0–255, dynamic batch. The head's biases
    make PHOTO_TAGS (and the "general" rating) score ~1 and everything else ~0, so every photo gets a realistic
    30-tag prompt.
    """
    import csv

    from transformers import ViTConfig, ViTModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tag_rows: list[tuple[str, int]] = wd14_tag_rows() if rows is None else rows

    class WD14(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            config = ViTConfig(**{**WD14_VIT_CONFIG, "image_size": input_size}, attn_implementation="eager")
            self.vit = ViTModel(config, add_pooling_layer=False)
            self.head = torch.nn.Linear(config.hidden_size, len(tag_rows))

        def forward(self, bgr: torch.Tensor) -> torch.Tensor:
            rgb = bgr[..., [2, 1, 0]].permute(0, 3, 1, 2) / 127.5 - 1.0  # NHWC BGR 0–255 → NCHW RGB −1..1
            features = self.vit(pixel_values=rgb).last_hidden_state.mean(dim=1)
            return torch.sigmoid(self.head(features))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WD14().eval()
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.01)
        bias = torch.full((len(tag_rows),), -8.0)
        for i, (name, _category) in enumerate(tag_rows):
            if name in PHOTO_TAGS or name == "general":
                bias[i] = 8.0
        model.head.bias.copy_(bias)
    example = torch.full((1, input_size, input_size, 3), 127.0)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(folder / "model.onnx"), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    with (folder / "selected_tags.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, (name, category) in enumerate(tag_rows):
            writer.writerow([i, name, category, 1_000_000 // (i + 1)])
    return folder


# -- everything --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchModels:
    """Where the benchmark's models are."""

    sdxl_folder: Path  # a diffusers folder (the bare call and the Stylizer both load it)
    vae_folder: Path | None  # the VAE the Stylizer's config names ("" = the folder's own)
    lora: Path
    tagger_folder: Path
    lora_rank: int
    build_s: float
    speed_lora: Path | None = None  # the [speed.fast] preset's LoRA


def _prompt_texts() -> list[str]:
    """Everything the prompts may hold: every tag, and the template config's style texts."""
    import tomllib

    from pipeline.gpu.prompt import tag_text

    texts = [tag_text(name) for name, _ in wd14_tag_rows()]
    config = tomllib.loads((ROOT / "config.toml").read_text(encoding="utf-8"))
    for style in config.get("styles", {}).values():
        texts += [style.get("trigger_words", ""), style.get("negative_prompt", ""), *style.get("clashing_tags", [])]
    return texts + list(config.get("tagger", {}).get("drop_tags", []))


def _lora_state_dict(unet, rank: int, seed: int) -> dict[str, torch.Tensor]:
    """A diffusers/PEFT-format LoRA on every attention projection (to_q/k/v/out.0) of the UNet's transformers."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if ".transformer_blocks." in name and name.endswith(("to_q", "to_k", "to_v", "to_out.0")):
            down = torch.randn(rank, module.in_features, generator=generator) / math.sqrt(module.in_features)
            up = torch.randn(module.out_features, rank, generator=generator) * 0.01
            state[f"unet.{name}.lora_A.weight"] = down.half()
            state[f"unet.{name}.lora_B.weight"] = up.half()
    return state


def write_full_models(folder: Path, *, lora_rank: int = 32, rebuild: bool = False) -> BenchModels:
    """Build the full-size models with random weights into folder (once: reused while BUILD_VERSION matches)."""
    folder = Path(folder).expanduser()
    marker = folder / "bench-models.json"
    paths = dict(sdxl_folder=folder / "sdxl-base-random", vae_folder=folder / "vae-fp16-fix-random",
                 lora=folder / f"clay-lora-r{lora_rank}.safetensors", tagger_folder=folder / "wd14-vit-448-random")
    wanted = {"version": BUILD_VERSION, "lora_rank": lora_rank}
    if not rebuild and marker.is_file():
        built = json.loads(marker.read_text(encoding="utf-8"))
        if {k: built.get(k) for k in wanted} == wanted:
            return BenchModels(**paths, lora_rank=lora_rank, build_s=0.0, speed_lora=write_speed_lora(folder))
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline
    from safetensors.torch import save_file
    from transformers import CLIPTokenizer

    from pipeline.gpu.tiny import SDXL_SCHEDULER_CONFIG

    started = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    build_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # random init is fast on a GPU
    print(f"building full-size SDXL + WD14 with random weights into {folder} (on {build_device}) …", flush=True)
    with torch.random.fork_rng(devices=[]), torch.device(build_device):
        torch.manual_seed(0)
        unet, vae = build_unet(SDXL_BASE).half(), build_vae(SDXL_BASE).half()
        text_encoder, text_encoder_2 = (m.half() for m in build_text_encoders(SDXL_BASE))
    with tempfile.TemporaryDirectory() as tmp:
        words = words_of(_prompt_texts())
        write_word_tokenizer(Path(tmp) / "tokenizer", words, pad_token="<|endoftext|>")
        write_word_tokenizer(Path(tmp) / "tokenizer_2", words, pad_token="!")  # SDXL's 2nd tokenizer pads with "!"
        tokenizers = [CLIPTokenizer.from_pretrained(str(Path(tmp) / name)) for name in ("tokenizer", "tokenizer_2")]
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1], unet=unet, scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG),
        requires_aesthetics_score=False, force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(str(paths["sdxl_folder"]), safe_serialization=True)
    # transformers 5 saves only tokenizer.json; keep the classic vocab.json + merges.txt too (as gpu.tiny does).
    write_word_tokenizer(paths["sdxl_folder"] / "tokenizer", words, pad_token="<|endoftext|>")
    write_word_tokenizer(paths["sdxl_folder"] / "tokenizer_2", words, pad_token="!")
    vae.register_to_config(**VAE_FP16_FIX_OVERRIDES)
    vae.save_pretrained(str(paths["vae_folder"]), safe_serialization=True)
    save_file(_lora_state_dict(unet, lora_rank, seed=1), str(paths["lora"]), metadata={"format": "pt"})
    del pipe, unet, vae, text_encoder, text_encoder_2
    free_memory()
    write_wd14_vit_tagger(paths["tagger_folder"])
    build_s = time.perf_counter() - started
    marker.write_text(json.dumps({**wanted, "build_s": build_s}), encoding="utf-8")
    print(f"built in {build_s:.0f} s", flush=True)
    return BenchModels(**paths, lora_rank=lora_rank, build_s=build_s, speed_lora=write_speed_lora(folder))


def write_speed_lora(folder: Path) -> Path:
    """A random rank-64 speed LoRA for the full-size UNet (written once; built from a meta-device UNet, no memory)."""
    from safetensors.torch import save_file

    path = Path(folder).expanduser() / f"speed-lora-r{SPEED_LORA_RANK}.safetensors"
    if not path.is_file():
        with torch.device("meta"):
            unet = build_unet(SDXL_BASE)
        save_file(_lora_state_dict(unet, SPEED_LORA_RANK, seed=2), str(path), metadata={"format": "pt"})
    return path


def tiny_models(folder: Path) -> TinyModels:
    """pipeline.gpu.tiny's models in folder: written once (with a list of their paths beside them), then reused."""
    from pipeline.gpu.tiny import TinyModels, write_tiny_models

    folder = Path(folder).expanduser()
    listing = folder / "tiny-models.json"
    if listing.is_file():
        paths = json.loads(listing.read_text(encoding="utf-8"))
        return TinyModels(**{k: Path(v) if v else None for k, v in paths.items()})  # type: ignore[arg-type]
    tiny = write_tiny_models(folder)
    listing.write_text(json.dumps({k: str(v) if v else None for k, v in vars(tiny).items()}), encoding="utf-8")
    return tiny


def write_smoke_models(folder: Path) -> BenchModels:
    """pipeline.gpu.tiny's models: tiny SDXL diffusers folder, kohya LoRA (rank 4), 32 px WD14-shaped tagger."""
    from pipeline.gpu.tiny import LORA_RANK

    started = time.perf_counter()
    tiny = tiny_models(folder)
    return BenchModels(sdxl_folder=tiny.sdxl_folder, vae_folder=None, lora=tiny.lora_kohya,
                       tagger_folder=tiny.tagger_folder, lora_rank=LORA_RANK, build_s=time.perf_counter() - started,
                       speed_lora=tiny.speed_lora)


# ----------------------------------------------------------------------------------------------------------------
# Configs, photos, clocks
# ----------------------------------------------------------------------------------------------------------------


def bench_config_text(template: str, models: BenchModels, *, device: str, dtype: str, steps: int,
                      megapixels: float, switches: dict[str, Any]) -> str:
    """The template config (comments kept) with the models pointed at ours, one style, and the given switches."""
    import tomlkit

    doc = tomlkit.parse(template)
    pipeline = doc.setdefault("pipeline", tomlkit.table())
    pipeline["base_model"] = str(models.sdxl_folder)
    pipeline["base_config"] = str(models.sdxl_folder)
    pipeline["vae"] = str(models.vae_folder) if models.vae_folder else ""
    pipeline["device"] = device
    pipeline["dtype"] = dtype
    pipeline["steps"] = steps
    pipeline["megapixels"] = megapixels
    pipeline["cache_dir"] = str(models.sdxl_folder.parent / "cache")
    for name in SWITCHES:
        pipeline[name] = bool(switches.get(name, False))
    pipeline["attention"] = switches.get("attention", "sdpa")
    doc.setdefault("tagger", tomlkit.table())["model"] = str(models.tagger_folder)
    default = str(pipeline.get("default_style", "clay"))
    styles = doc["styles"]
    for name in [n for n in styles if n != default]:  # one style with one LoRA: the Stylizer fuses it
        del styles[name]
    styles[default]["lora"] = str(models.lora)
    if switches.get("speed"):
        preset = tomlkit.table()
        preset.update({"lora": str(models.speed_lora), **FAST_PRESET})
        speed = tomlkit.table(is_super_table=True)
        speed[switches["speed"]] = preset
        doc["speed"] = speed
        styles[default]["speed"] = switches["speed"]
    return tomlkit.dumps(doc)


def bench_photo(side: int):
    """The repository's example photo, centre-cropped to a square of side × side pixels."""
    from PIL import Image

    image = Image.open(ROOT / "examples" / "photo.jpg").convert("RGB")
    w, h = image.size
    s = min(w, h)
    image = image.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return image.resize((side, side), Image.Resampling.LANCZOS)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(Exception):
        torch._dynamo.reset()


def quiet_libraries() -> None:
    """No per-component progress bars or notices while building and loading."""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()

