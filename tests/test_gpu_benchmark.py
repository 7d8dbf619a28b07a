"""benchmarks/gpu_speed.py: its CPU smoke run end to end, its hard-coded full-size SDXL configs, its WD14 tagger.

The smoke run checks that the script runs and reports every figure, not that anything is fast.
"""

from __future__ import annotations

import json
import os
import subprocess
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


def _positive(value) -> bool:
    return isinstance(value, int | float) and value > 0


def test_smoke_run_reports_every_figure(tmp_path):
    out = tmp_path / "smoke.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text(encoding="utf-8"))

    assert report["mode"] == "smoke"
    setup = report["setup"]
    assert setup["n_steps"] == 5 and setup["batches"] == [1, 2]
    assert setup["prompt"].startswith("(Clay Animation, Clay:2)") and _positive(setup["prompt_tokens"])
    runs = report["runs"]
    assert set(runs) == {"baseline", "all", "bare"}
    for name, run in runs.items():
        assert set(run["batches"]) == {"1", "2"}, name
        for batch, figures in run["batches"].items():
            assert _positive(figures["seconds"]) and _positive(figures["images_per_s"]), (name, batch)
            assert _positive(figures["unet_steps_per_s"]), (name, batch)
            assert _positive(figures["first_call_s"]), (name, batch)
            stages = figures["stages"]
            for stage in ("vae_encode", "unet", "vae_decode", "total"):
                assert _positive(stages[stage]), (name, batch, stage)
            if name != "bare":
                for stage in ("tag", "prompt", "denoise"):
                    assert _positive(stages[stage]), (name, batch, stage)
                assert stages["denoise"] <= stages["total"]
            assert "peak_gpu_mem_bytes" in figures  # None on the CPU
    assert runs["all"]["switches"] == {"fuse_qkv": True, "channels_last": True, "resolution_buckets": True}
    for name in ("baseline", "all"):
        assert _positive(report["speedup_vs_bare"][name]["1"]) and _positive(report["speedup_vs_bare"][name]["2"])
    assert _positive(report["speedup_vs_baseline"]["all"]["1"])

    flops = report["flops"]
    assert _positive(flops["unet_forward_flops"]) and flops["unet_steps"] == 5
    assert flops["denoise_flops"] == flops["unet_forward_flops"] * 5
    assert flops["bound_s"] == pytest.approx(flops["denoise_flops"] / (flops["peak_tflops"] * 1e12))
    assert flops["latent_shape"][0] == 2  # classifier-free guidance
    for name in runs:
        assert _positive(flops["per_run"][name]["denoise_over_bound"])

    table = proc.stdout
    for heading in ("batch 1, per stage", "throughput (images/s)", "speed-up vs the bare diffusers call",
                    "UNet FLOP bound", "compile skipped on the CPU"):
        assert heading in table


def test_full_size_configs_are_the_published_sdxl_architecture(gpu_speed):
    counts = gpu_speed.meta_param_counts()
    published = {"unet": 2.567e9, "text_encoder": 123e6, "text_encoder_2": 695e6, "vae": 83.7e6}
    for name, expected in published.items():
        assert counts[name]["params"] == pytest.approx(expected, rel=0.01), name
    unet = gpu_speed.SDXL_UNET_CONFIG
    assert unet["cross_attention_dim"] == gpu_speed.CLIP_L_CONFIG["hidden_size"] + \
        gpu_speed.OPENCLIP_BIGG_CONFIG["hidden_size"]
    assert unet["projection_class_embeddings_input_dim"] == 6 * unet["addition_time_embed_dim"] + \
        gpu_speed.OPENCLIP_BIGG_CONFIG["projection_dim"]


def test_unet_flops_count_attention_and_scale_with_batch(gpu_speed):
    from pipeline.gpu.tiny import _build_unet

    config = dict(_build_unet().config)
    one = gpu_speed.unet_forward_flops(config, batch=1, latent_hw=(16, 16), tokens=77)
    two = gpu_speed.unet_forward_flops(config, batch=2, latent_hw=(16, 16), tokens=77)
    longer = gpu_speed.unet_forward_flops(config, batch=1, latent_hw=(16, 16), tokens=154)
    assert one > 0 and two == 2 * one
    assert longer > one  # cross-attention over more text tokens is counted


def test_word_tokenizer_keeps_each_word_one_token(gpu_speed, tmp_path):
    from transformers import CLIPTokenizer

    from pipeline.gpu.prompt import tag_text

    tags = [tag_text(t) for t in gpu_speed.PHOTO_TAGS]
    words = gpu_speed.words_of(["claymation style", *tags, "hairs"])
    gpu_speed.write_word_tokenizer(tmp_path / "tok", words, pad_token="<|endoftext|>")
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


def test_full_size_wd14_tagger_runs_in_claybots_tagger(gpu_speed, tmp_path):
    from pipeline.core.settings import TaggerSettings
    from pipeline.gpu.tagger import Tagger

    folder = gpu_speed.write_wd14_vit_tagger(tmp_path / "wd14")
    tagger = Tagger(folder, TaggerSettings(), use_cuda=False)
    assert tagger.input_size == 448
    assert len(tagger.names) == 10_861
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    (tags,) = tagger([photo])
    assert {name for name, _ in tags.general} == set(gpu_speed.PHOTO_TAGS)
    assert tags.characters == []
    assert tags.rating == "general"
    assert tagger.scores([photo, photo]).shape == (2, 10_861)  # dynamic batch
