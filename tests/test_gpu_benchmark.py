"""benchmarks/gpu_speed.py and bench_models.py: the full-size SDXL configs, the FLOP count, the word tokenizer and
the WD14 tagger. The smoke run end to end is tests/test_device_kit.py's (the GPU run kit's CPU rehearsal).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_speed.py"


@pytest.fixture(scope="module")
def gpu_speed():
    """The benchmark script as a module."""
    module = load_script(SCRIPT)
    yield module
    sys.modules.pop(module.__name__, None)


@pytest.fixture(scope="module")
def bench_models(gpu_speed):
    """The benchmarks' model builders (gpu_speed put benchmarks/ on the path)."""
    import bench_models

    return bench_models


def test_full_size_configs_are_the_published_sdxl_architecture(bench_models):
    from pipeline.gpu.architectures import SDXL_BASE

    counts = bench_models.meta_param_counts()
    published = {"unet": 2.567e9, "text_encoder": 123e6, "text_encoder_2": 695e6, "vae": 83.7e6}
    for name, expected in published.items():
        assert counts[name]["params"] == pytest.approx(expected, rel=0.01), name
    unet = SDXL_BASE.unet
    assert unet["cross_attention_dim"] == SDXL_BASE.text_encoder["hidden_size"] + \
        SDXL_BASE.text_encoder_2["hidden_size"]
    assert unet["projection_class_embeddings_input_dim"] == 6 * unet["addition_time_embed_dim"] + \
        SDXL_BASE.text_encoder_2["projection_dim"]


def test_unet_flops_count_attention_and_scale_with_batch(gpu_speed):
    from pipeline.gpu.architectures import TINY

    config = TINY.unet
    one = gpu_speed.unet_forward_flops(config, batch=1, latent_hw=(16, 16), tokens=77)
    two = gpu_speed.unet_forward_flops(config, batch=2, latent_hw=(16, 16), tokens=77)
    longer = gpu_speed.unet_forward_flops(config, batch=1, latent_hw=(16, 16), tokens=154)
    assert one > 0 and two == 2 * one
    assert longer > one  # cross-attention over more text tokens is counted


def test_word_tokenizer_keeps_each_word_one_token(bench_models, tmp_path):
    from transformers import CLIPTokenizer

    from pipeline.gpu.prompt import tag_text

    tags = [tag_text(t) for t in bench_models.PHOTO_TAGS]
    words = bench_models.words_of(["claymation style", *tags, "hairs"])
    bench_models.write_word_tokenizer(tmp_path / "tok", words, pad_token="<|endoftext|>")
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path / "tok"))
    ids = tokenizer("long hair, looking at viewer, t-shirt").input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens == ["<|startoftext|>", "long</w>", "hair</w>", ",</w>", "looking</w>", "at</w>", "viewer</w>",
                      ",</w>", "t</w>", "-</w>", "shirt</w>", "<|endoftext|>"]
    assert ids[0] == 49406 and ids[-1] == 49407  # CLIP's ids: pooling takes the argmax, <|endoftext|>
    prompt = ", ".join(["claymation style", *tags])
    n = len(tokenizer(prompt).input_ids) - 2
    # one token per word, digit and punctuation mark, as CLIP's BPE gives common words — not one per character
    assert 60 < n < 120 < len(prompt)


def test_full_size_wd14_tagger_runs_in_claybots_tagger(bench_models, tmp_path):
    from pipeline.core.settings import TaggerSettings
    from pipeline.gpu.tagger import Tagger

    folder = bench_models.write_wd14_vit_tagger(tmp_path / "wd14")
    tagger = Tagger(folder, TaggerSettings(), use_cuda=False)
    assert tagger.input_size == 448
    assert len(tagger.names) == 10_861
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    (tags,) = tagger([photo])
    assert {name for name, _ in tags.general} == set(bench_models.PHOTO_TAGS)
    assert tags.characters == []
    assert tags.rating == "general"
    assert tagger.scores([photo, photo]).shape == (2, 10_861)  # dynamic batch
