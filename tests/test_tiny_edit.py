"""Tests for pipeline.gpu.tiny_edit: the tiny FLUX.2 [klein] folder loads and edits through diffusers, offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
from huggingface_hub.repocard import metadata_load
from PIL import Image, ImageOps
from safetensors.torch import load_file
from transformers import Qwen2TokenizerFast, Qwen3ForCausalLM

from pipeline.gpu.edit import text_layers
from pipeline.gpu.tiny_edit import TINY_TEXT_LAYERS, write_tiny_edit_model

PHOTO = Path(__file__).resolve().parent.parent / "examples" / "photo.jpg"
WEIGHTS = ("transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
           "text_encoder/model.safetensors")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_edit_model(tmp_path_factory.mktemp("tiny-edit") / "klein")


@pytest.fixture(scope="module")
def pipe(folder: Path) -> Flux2KleinPipeline:
    pipe = Flux2KleinPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    with Image.open(PHOTO) as image:
        return image.convert("RGB").resize((128, 128))


def edit(pipe: Flux2KleinPipeline, image: Image.Image, prompt: str = "turn it into clay", seed: int = 1) -> np.ndarray:
    result = pipe(image=image, prompt=prompt, height=128, width=128, num_inference_steps=4, guidance_scale=1.0,
                  generator=torch.Generator("cpu").manual_seed(seed), text_encoder_out_layers=TINY_TEXT_LAYERS,
                  max_sequence_length=128)
    output = result.images[0]
    assert output.size == (128, 128)
    return np.asarray(output)


def test_folder_loads_as_the_klein_pipeline(folder: Path, pipe: Flux2KleinPipeline) -> None:
    assert isinstance(pipe.transformer, Flux2Transformer2DModel)
    assert isinstance(pipe.vae, AutoencoderKLFlux2)
    assert isinstance(pipe.text_encoder, Qwen3ForCausalLM)
    assert isinstance(pipe.tokenizer, Qwen2TokenizerFast)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert pipe.config.is_distilled is True
    assert pipe.scheduler.config.use_dynamic_shifting
    # The pipeline's conditioning width: three stacked hidden states of the text encoder.
    assert pipe.transformer.config.joint_attention_dim == len(TINY_TEXT_LAYERS) * pipe.text_encoder.config.hidden_size
    assert pipe.transformer.config.in_channels == 4 * pipe.vae.config.latent_channels
    assert pipe.vae_scale_factor == 4
    for weights in WEIGHTS:
        assert load_file(str(folder / weights))
    assert not list(folder.rglob("*.bin"))


def test_tokenizer_loads_offline_and_fits_the_encoder(folder: Path, pipe: Flux2KleinPipeline) -> None:
    tokenizer = Qwen2TokenizerFast.from_pretrained(str(folder / "tokenizer"))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "clay café ✨"}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=False)
    assert text.startswith("<|im_start|>user\nclay café ✨<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer(text, padding="max_length", truncation=True, max_length=64)["input_ids"]
    assert len(ids) == 64 and ids[-1] == tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert max(ids) < pipe.text_encoder.config.vocab_size
    assert len(tokenizer) <= pipe.text_encoder.config.vocab_size
    assert tokenizer.decode(ids, skip_special_tokens=True).startswith("user\nclay café ✨")


def test_edit_is_seeded(pipe: Flux2KleinPipeline, photo: Image.Image) -> None:
    first = edit(pipe, photo)
    assert np.array_equal(first, edit(pipe, photo))
    assert not np.array_equal(first, edit(pipe, photo, seed=2))


def test_prompt_and_reference_photo_change_the_edit(pipe: Flux2KleinPipeline, photo: Image.Image) -> None:
    first = edit(pipe, photo)
    assert not np.array_equal(first, edit(pipe, photo, prompt="a dog in the snow"))
    assert not np.array_equal(first, edit(pipe, ImageOps.invert(photo)))


def test_model_card_carries_the_licence(folder: Path, tmp_path: Path) -> None:
    assert metadata_load(folder / "README.md")["license"] == "apache-2.0"
    other = write_tiny_edit_model(tmp_path / "nc", licence="other", licence_name="flux-non-commercial-license")
    card = metadata_load(other / "README.md")
    assert card["license"] == "other" and card["license_name"] == "flux-non-commercial-license"


def test_weights_are_deterministic_for_a_seed(folder: Path, tmp_path: Path) -> None:
    same = write_tiny_edit_model(tmp_path / "same")
    other = write_tiny_edit_model(tmp_path / "other", seed=1)
    for weights in WEIGHTS:
        reference = load_file(str(folder / weights))
        assert all(torch.equal(tensor, load_file(str(same / weights))[name]) for name, tensor in reference.items())
        assert not all(torch.equal(tensor, load_file(str(other / weights))[name]) for name, tensor in reference.items())


def test_text_layers_are_evenly_spaced() -> None:
    assert text_layers(36, 3) == (9, 18, 27)  # the real Qwen3-4B's layers, the pipeline's default
    assert text_layers(4, 3) == TINY_TEXT_LAYERS == (1, 2, 3)
