"""Tests for pipeline.gpu.tiny: the tiny random-weight models load and run in the real formats, offline."""

from __future__ import annotations

import csv
import logging
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline
from onnx import numpy_helper
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from pipeline.gpu.tiny import TinyModels, write_tiny_models, write_tiny_tagger

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """Write the tiny models once for the whole module."""
    return write_tiny_models(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    """A 64x64 test photo with some structure."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:64]
    pixels = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1) + rng.integers(0, 30, (64, 64, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _load(models: TinyModels) -> StableDiffusionXLImg2ImgPipeline:
    """Load the diffusers folder offline."""
    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(models.sdxl_folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe: StableDiffusionXLImg2ImgPipeline, image: Image.Image) -> np.ndarray:
    """Run a small, seeded img2img."""
    return pipe(
        "claymation, a cat",
        image=image,
        num_inference_steps=4,
        strength=0.5,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images


class _Records(logging.Handler):
    """Collect log records of the libraries that report LoRA loading problems."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _lora_problems(messages: list[str]) -> list[str]:
    """Messages that say LoRA keys were unexpected, missing or not loaded."""
    pattern = re.compile(r"unexpected|missing|not (been )?(correctly )?(renamed|loaded)|no lora keys", re.IGNORECASE)
    return [m for m in messages if pattern.search(m)]


def test_layout_and_sizes(models: TinyModels) -> None:
    """The files sit where the API says, weights are safetensors only, and everything is small."""
    root = models.sdxl_folder.parent
    assert models.sdxl_folder == root / "sdxl"
    assert models.sdxl_single_file == root / "sdxl.safetensors"
    assert models.lora_kohya == root / "clay_lora_kohya.safetensors"
    assert models.lora_diffusers == root / "clay_lora_diffusers.safetensors"
    assert models.tagger_folder == root / "wd14"
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert list((models.sdxl_folder / sub).glob("*.safetensors")), sub
    assert not list(models.sdxl_folder.rglob("*.bin"))
    for sub in ("tokenizer", "tokenizer_2"):
        assert (models.sdxl_folder / sub / "vocab.json").is_file()
        assert (models.sdxl_folder / sub / "merges.txt").read_text().strip() == "#version: 0.2"
    assert (models.tagger_folder / "model.onnx").is_file()
    assert (models.tagger_folder / "selected_tags.csv").is_file()
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 40 * 1024 * 1024


def test_folder_round_trip_runs_img2img(models: TinyModels, image: Image.Image) -> None:
    """The diffusers folder reloads offline with SDXL's settings and runs a reproducible img2img."""
    pipe = _load(models)
    assert pipe.tokenizer.model_max_length == 77 and pipe.tokenizer_2.model_max_length == 77
    assert pipe.tokenizer("a clay cat!").input_ids[0] == pipe.tokenizer.bos_token_id
    assert pipe.unet.config.cross_attention_dim == 96
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.text_encoder.config.hidden_size == 32 and pipe.text_encoder_2.config.hidden_size == 64
    assert pipe.vae.config.force_upcast is True and pipe.vae.config.scaling_factor == pytest.approx(0.13025)
    assert pipe.config.requires_aesthetics_score is False
    scheduler = pipe.scheduler.config
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert (scheduler.beta_start, scheduler.beta_end, scheduler.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert (scheduler.timestep_spacing, scheduler.steps_offset, scheduler.prediction_type) == ("leading", 1, "epsilon")

    first = _run(pipe, image)
    assert first.shape == (1, 64, 64, 3)
    assert np.isfinite(first).all() and first.min() >= 0.0 and first.max() <= 1.0
    np.testing.assert_array_equal(first, _run(pipe, image))


def test_single_file_is_original_layout_and_loads_every_weight(
    models: TinyModels, image: Image.Image, tmp_path: Path
) -> None:
    """from_single_file(config=folder) loads every weight from the checkpoint, equal to the folder's."""
    with safe_open(str(models.sdxl_single_file), framework="pt") as handle:
        keys = set(handle.keys())
    for key in (
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight",
        "model.diffusion_model.middle_block.1.transformer_blocks.1.attn2.to_k.weight",
        "model.diffusion_model.output_blocks.2.2.conv.weight",
        "model.diffusion_model.label_emb.0.0.weight",
        "first_stage_model.encoder.down.0.block.0.norm1.weight",
        "first_stage_model.decoder.up.1.upsample.conv.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
        "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
        "conditioner.embedders.1.model.text_projection",
    ):
        assert key in keys, key
    prefixes = ("model.diffusion_model.", "first_stage_model.", "conditioner.embedders.0.", "conditioner.embedders.1.")
    assert all(key.startswith(prefixes) for key in keys)

    # A config folder WITHOUT weights: any component not taken from the checkpoint would fail to load,
    # instead of silently falling back to the folder's weights.
    config = tmp_path / "config"
    shutil.copytree(models.sdxl_folder, config, ignore=shutil.ignore_patterns("*.safetensors"))
    single = StableDiffusionXLImg2ImgPipeline.from_single_file(
        str(models.sdxl_single_file), config=str(config), local_files_only=True
    )
    single.set_progress_bar_config(disable=True)
    folder = _load(models)
    for name in COMPONENTS:
        module = getattr(single, name)
        assert all(t.device.type != "meta" for t in [*module.parameters(), *module.buffers()]), name
        expected = getattr(folder, name).state_dict()
        got = module.state_dict()
        assert got.keys() == expected.keys(), name
        unequal = [key for key in expected if not torch.equal(got[key], expected[key])]
        assert not unequal, (name, unequal[:5])
    np.testing.assert_array_equal(_run(single, image), _run(folder, image))


def test_kohya_lora_uses_real_sdxl_names(models: TinyModels) -> None:
    """The kohya file names modules the way real kohya SDXL LoRAs do, and matches the diffusers file."""
    kohya = load_file(str(models.lora_kohya))
    peft = load_file(str(models.lora_diffusers))
    names = {key.split(".")[0] for key in kohya}
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names
    assert "lora_unet_middle_block_1_transformer_blocks_1_attn2_to_out_0" in names
    assert "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_v" in names
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj" in names
    assert "lora_te2_text_model_encoder_layers_1_self_attn_out_proj" in names
    assert not any("down_blocks" in name or "up_blocks" in name for name in names)
    for name in names:
        assert {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"} <= kohya.keys()
        assert kohya[f"{name}.lora_down.weight"].shape[0] == 4
    assert len(peft) == 2 * len(names)
    assert all(re.fullmatch(r"(unet|text_encoder|text_encoder_2)\..+\.lora_[AB]\.weight", key) for key in peft)
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in peft


def _adapter_deltas(pipe: StableDiffusionXLImg2ImgPipeline) -> dict[str, torch.Tensor]:
    """Return {component.module: scaled B @ A} for every layer carrying the "clay" adapter."""
    deltas: dict[str, torch.Tensor] = {}
    for component in COMPONENTS:
        for name, module in getattr(pipe, component).named_modules():
            if hasattr(module, "lora_A") and "clay" in module.lora_A:
                delta = module.lora_B["clay"].weight @ module.lora_A["clay"].weight * module.scaling["clay"]
                deltas[f"{component}.{name.removeprefix('text_model.')}"] = delta.detach()
    return deltas


def _file_deltas(models: TinyModels) -> dict[str, torch.Tensor]:
    """Return {component.module: B @ A} from the diffusers-format LoRA file."""
    peft = load_file(str(models.lora_diffusers))
    deltas = {}
    for key in peft:
        if key.endswith(".lora_A.weight"):
            module = key.removesuffix(".lora_A.weight")
            component, _, name = module.partition(".")
            deltas[f"{component}.{name.removeprefix('text_model.')}"] = peft[f"{module}.lora_B.weight"] @ peft[key]
    return deltas


@pytest.fixture(scope="module")
def lora_outputs(models: TinyModels, image: Image.Image) -> dict[str, object]:
    """Outputs without LoRA, with each LoRA file, and fused; plus the loaded deltas and library warnings."""
    pipe = _load(models)
    results: dict[str, object] = {"base": _run(pipe, image)}
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers", "peft")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for kind, path in (("kohya", models.lora_kohya), ("diffusers", models.lora_diffusers)):
                pipe.load_lora_weights(str(path), adapter_name="clay")
                results[f"{kind}_deltas"] = _adapter_deltas(pipe)
                results[kind] = _run(pipe, image)
                if kind == "diffusers":
                    pipe.fuse_lora(lora_scale=1.0)
                    pipe.unload_lora_weights()
                    results["fused"] = _run(pipe, image)
                else:
                    pipe.unload_lora_weights()
                    results["unloaded"] = _run(pipe, image)
        handler.messages.extend(str(w.message) for w in caught)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    results["warnings"] = handler.messages
    return results


@pytest.mark.parametrize("kind", ["kohya", "diffusers"])
def test_lora_loads_completely_and_changes_output(models: TinyModels, lora_outputs: dict, kind: str) -> None:
    """Each LoRA file loads every layer, with the file's weights, and visibly changes the picture."""
    assert not _lora_problems(lora_outputs["warnings"]), _lora_problems(lora_outputs["warnings"])
    expected = _file_deltas(models)
    got = lora_outputs[f"{kind}_deltas"]
    assert got.keys() == expected.keys()
    assert any(key.startswith("text_encoder.") for key in got) and any(key.startswith("text_encoder_2.") for key in got)
    for key, delta in expected.items():
        torch.testing.assert_close(got[key], delta, rtol=1e-5, atol=1e-6)
    assert np.abs(lora_outputs[kind] - lora_outputs["base"]).mean() > 1e-3


def test_lora_formats_agree_and_unload_restores(lora_outputs: dict) -> None:
    """The kohya and diffusers files give the same picture; unloading restores the base picture."""
    assert np.abs(lora_outputs["kohya"] - lora_outputs["diffusers"]).max() <= 1e-5
    np.testing.assert_array_equal(lora_outputs["unloaded"], lora_outputs["base"])


def test_fused_lora_equals_unfused(lora_outputs: dict) -> None:
    """fuse_lora(1.0) + unload_lora_weights() gives the unfused LoRA picture."""
    assert np.abs(lora_outputs["fused"] - lora_outputs["diffusers"]).max() <= 1e-4


def _tagger_parts(folder: Path) -> tuple[ort.InferenceSession, list[dict[str, str]], np.ndarray, np.ndarray]:
    """Open the tagger: session, csv rows, W, b."""
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    with (folder / "selected_tags.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    model = onnx.load(str(folder / "model.onnx"))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return session, rows, init["W"], init["b"]


def test_tagger_runs_in_onnxruntime_with_dynamic_batch(models: TinyModels) -> None:
    """The WD14-shaped tagger runs on CPU with batch 2, and its probabilities follow the documented formula."""
    model = onnx.load(str(models.tagger_folder / "model.onnx"))
    assert model.ir_version == 10
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    session, rows, weight, bias = _tagger_parts(models.tagger_folder)
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    assert (inp.name, out.name) == ("input", "output")
    assert inp.shape[0] == "batch" and inp.shape[3] == 3 and out.shape == ["batch", len(rows)]
    size = inp.shape[1]
    assert size == inp.shape[2] == 32

    rng = np.random.default_rng(1)
    batch = rng.uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    batch[1] = [40.0, 160.0, 220.0]  # a flat BGR colour
    probs = session.run(["output"], {"input": batch})[0]
    assert probs.shape == (2, len(rows))
    expected = 1.0 / (1.0 + np.exp(-(batch.mean(axis=(1, 2)) / 255.0 @ weight + bias)))
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)

    categories = np.array([int(row["category"]) for row in rows])
    for p in probs:
        general = p[categories == 0]
        assert (general > 0.35).any() and (general <= 0.35).any()
        assert (p[categories == 4] > 0.85).any()
        names = {row["name"] for row, prob in zip(rows, p, strict=True) if prob > 0.35}
        assert {"realistic", "photorealistic", "photo_(medium)"} <= names


def test_tagger_csv_has_wd14_layout(models: TinyModels) -> None:
    """selected_tags.csv has the real header, ratings first, booru-style general and character tags."""
    with (models.tagger_folder / "selected_tags.csv").open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    assert header == ["tag_id", "name", "category", "count"]
    assert [(name, cat) for _, name, cat, _ in rows[:4]] == [
        ("general", "9"),
        ("sensitive", "9"),
        ("questionable", "9"),
        ("explicit", "9"),
    ]
    general = [name for _, name, cat, _ in rows if cat == "0"]
    characters = [name for _, name, cat, _ in rows if cat == "4"]
    assert len(general) >= 30 and len(characters) >= 3
    assert {"1girl", "solo", "red_shirt", "photo_(medium)", "realistic", "photorealistic"} <= set(general)
    assert any("(" in name for name in characters)
    assert all(" " not in name for _, name, _, _ in rows)


def test_tagger_input_size_is_read_from_graph(tmp_path: Path) -> None:
    """A tagger written with another input size declares it in the graph and runs at that size."""
    folder = write_tiny_tagger(tmp_path / "wd14", seed=3, input_size=48)
    session, rows, _, _ = _tagger_parts(folder)
    size = session.get_inputs()[0].shape[1]
    assert size == 48
    probs = session.run(None, {"input": np.full((3, size, size, 3), 128.0, np.float32)})[0]
    assert probs.shape == (3, len(rows))


def test_same_seed_same_files(models: TinyModels, tmp_path: Path) -> None:
    """A seed fixes every weight; another seed changes them."""
    again = write_tiny_models(tmp_path / "again", seed=0)
    for name in ("sdxl_single_file", "lora_kohya", "lora_diffusers"):
        # compare contents, not bytes: safetensors writes the metadata header in hash-map order
        first, second = load_file(str(getattr(models, name))), load_file(str(getattr(again, name)))
        assert first.keys() == second.keys(), name
        assert all(torch.equal(first[key], second[key]) for key in first), name
    assert (again.tagger_folder / "model.onnx").read_bytes() == (models.tagger_folder / "model.onnx").read_bytes()
    other = write_tiny_tagger(tmp_path / "other", seed=1)
    assert (other / "model.onnx").read_bytes() != (models.tagger_folder / "model.onnx").read_bytes()
