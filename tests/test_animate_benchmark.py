"""benchmarks/animate_speed.py: its full-size builders (shrunk to run here). Its CPU smoke run is a step of the GPU
run kit's rehearsal, checked in tests/test_device_kit.py.

The full-size mode
needs a GPU with tens of GB; its builders are run here with the hard-coded configs shrunk (same structure, tiny
widths), so that a mistake in how a full-size pipeline is put together shows up without one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "animate_speed.py"


@pytest.fixture(scope="module")
def animate_speed():
    """The benchmark script as a module."""
    module = load_script(SCRIPT)
    yield module
    sys.modules.pop(module.__name__, None)


def _positive(value) -> bool:
    return isinstance(value, int | float) and value > 0


def test_full_size_configs_are_the_published_sizes(animate_speed):
    counts = animate_speed.meta_param_counts()
    assert 4.9e9 < counts["wan"]["transformer"] < 5.1e9  # Wan 2.2 TI2V-5B
    assert 5.6e9 < counts["wan"]["text_encoder"] < 5.8e9  # UMT5-XXL's encoder
    assert 12.9e9 < counts["ltx"]["transformer"] < 13.2e9  # LTX-Video 0.9.7 13B
    assert 4.7e9 < counts["ltx"]["text_encoder"] < 4.8e9  # T5-XXL's encoder


@pytest.mark.parametrize("family", ["wan", "ltx"])
def test_full_size_builder_runs_through_the_animator_when_shrunk(animate_speed, monkeypatch, family):
    m = animate_speed
    text = {"d_model": 32, "d_ff": 37, "d_kv": 8, "num_heads": 4, "num_layers": 1, "vocab_size": 512}
    monkeypatch.setattr(m, "UMT5_XXL", {**m.UMT5_XXL, **text})
    monkeypatch.setattr(m, "T5_XXL", {**m.T5_XXL, **text})
    monkeypatch.setattr(m, "WAN_TRANSFORMER", {**m.WAN_TRANSFORMER, "num_layers": 1, "num_attention_heads": 2,
                                               "attention_head_dim": 12, "ffn_dim": 32, "text_dim": 32})
    monkeypatch.setattr(m, "WAN_VAE", {**m.WAN_VAE, "base_dim": 8, "decoder_base_dim": 8})
    monkeypatch.setattr(m, "LTX_TRANSFORMER", {**m.LTX_TRANSFORMER, "num_layers": 1, "num_attention_heads": 2,
                                               "attention_head_dim": 8, "cross_attention_dim": 16,
                                               "caption_channels": 32})
    # 1/16 of the widths: each decoder block still halves its input's channels as the real one does
    monkeypatch.setattr(m, "LTX_VAE", {**m.LTX_VAE, "block_out_channels": (8, 16, 32, 64, 128),
                                       "decoder_block_out_channels": (16, 32, 64), "layers_per_block": (1, 1, 1, 1, 1),
                                       "decoder_layers_per_block": (1, 1, 1, 1)})

    pipe = m.build_full(family, torch.device("cpu"), torch.float32)
    clip = {**m.FULL_SETTINGS[family], "frames": 9, "steps": 2, "megapixels": 0.0123}
    run = m.measure(family, pipe, device=torch.device("cpu"), dtype="float32", clip=clip, repeats=1, encode=False)

    assert run["pipeline"] == {"wan": "WanImageToVideoPipeline", "ltx": "LTXConditionPipeline"}[family]
    assert run["frames"] == 9 and run["size"][0] % 32 == 0 and run["size"][1] % 32 == 0
    assert _positive(run["seconds_per_clip"]) and run["peak_gpu_bytes"] is None
    if family == "wan":
        assert pipe.vae.dtype == torch.float32 and pipe.config.expand_timesteps  # as claybot runs Wan 2.2 5B
