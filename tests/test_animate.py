"""pipeline.gpu.animate: a picture → a clip, on tiny random-weight Wan and LTX models, through the real loader.

The tiny models are written as diffusers folders (pipeline.gpu.tiny_video) and loaded exactly as a configured
model is. Their weights are random, so what a clip shows means nothing; what is checked is what the code decides:
the frame count and size, the picture as frame 0 (Wan: exactly its VAE round trip, since Wan's causal VAE decodes
frame 0 from the picture's latent alone; LTX's decoder mixes frames, so there the picture must at least change the
clip), the seed, the steps reported, the time limit, and the MP4 a user gets.
"""

from __future__ import annotations

import io
import json
import shutil
import tomllib
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from bot.config import ConfigError, parse_config
from pipeline.core.clip import encode_mp4
from pipeline.core.errors import ModelError
from pipeline.core.settings import AnimateSettings, GpuSettings, PipelineSettings, StyleSettings
from pipeline.gpu.animate import Animator, ClipTimeout, family_of, motion_prompt
from pipeline.gpu.tiny_video import build_tokenizer, write_tiny_video_models

ROOT = Path(__file__).resolve().parent.parent
FRAMES = 9  # 4k+1 and 8k+1: both families' smallest clip with motion
STEPS = 2


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory):
    """Both tiny image-to-video models on disk."""
    return write_tiny_video_models(tmp_path_factory.mktemp("tiny-video"))


def settings_for(folder, **animate) -> GpuSettings:
    values = {"enabled": True, "model": str(folder), "frames": FRAMES, "fps": 8, "steps": STEPS,
              "megapixels": 0.006, "max_seconds": 16.0, **animate}
    return GpuSettings(pipeline=PipelineSettings(device="cpu"), animate=AnimateSettings(**values))


@pytest.fixture(scope="module")
def animators(tiny_video):
    """One Animator per family, loaded once for the module."""
    return {"wan": Animator(settings_for(tiny_video.wan_folder)), "ltx": Animator(settings_for(tiny_video.ltx_folder))}


def picture(color=(200, 120, 40), square=(30, 60, 160), size=(96, 64)) -> Image.Image:
    image = Image.new("RGB", size, color)
    image.paste(square, (10, 10, 50, 40))
    return image


def vae_round_trip(animator: Animator, image: Image.Image) -> np.ndarray:
    """The picture at the clip's size, through the model's own VAE (encode, then decode), as uint8 RGB."""
    width, height = animator.size_for(*image.size)
    x = np.asarray(image.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32) / 127.5 - 1.0
    video = torch.from_numpy(x).permute(2, 0, 1)[None, :, None]  # batch, channels, frames, height, width
    with torch.no_grad():
        latent = animator.pipe.vae.encode(video).latent_dist.mode()
        out = animator.pipe.vae.decode(latent, return_dict=False)[0]
    return ((out[0, :, 0].permute(1, 2, 0).numpy() + 1.0) * 127.5).clip(0, 255).round().astype(np.uint8)


def mean_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


@pytest.mark.parametrize("family", ["wan", "ltx"])
def test_each_family_makes_a_clip_of_the_configured_frames_at_the_pictures_aspect(animators, family):
    animator = animators[family]
    steps: list[tuple[int, int]] = []
    clip = animator.run(picture(size=(128, 64)), prompt="clay cat, smile", seed=1,
                        on_step=lambda done, total: steps.append((done, total)))

    assert animator.family == family
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (FRAMES, 32, 64, 3)  # 2:1 as the picture
    assert steps == [(1, STEPS), (2, STEPS)]
    assert clip.fps == 8 and clip.hold == 1 and clip.seed == 1 and clip.prompt == "clay cat, smile"


def test_wan_clip_starts_on_the_pictures_own_vae_round_trip(animators):
    animator = animators["wan"]
    a, b = picture(), picture(color=(40, 160, 200), square=(220, 220, 30))
    clip = animator.run(a, prompt="clay", seed=3)

    assert mean_error(clip.frames[0], vae_round_trip(animator, a)) < 0.5
    # the other picture's round trip is measurably elsewhere: the comparison can tell pictures apart
    assert mean_error(clip.frames[0], vae_round_trip(animator, b)) > 1.0


@pytest.mark.parametrize("family", ["wan", "ltx"])
def test_the_picture_and_the_seed_decide_the_clip(animators, family):
    animator = animators[family]
    a, b = picture(), picture(color=(40, 160, 200), square=(220, 220, 30))
    first = animator.run(a, prompt="clay", seed=5).frames
    again = animator.run(a, prompt="clay", seed=5).frames
    other_picture = animator.run(b, prompt="clay", seed=5).frames
    other_seed = animator.run(a, prompt="clay", seed=6).frames

    assert np.array_equal(first, again)
    assert mean_error(first, other_picture) > 1.0
    assert mean_error(first, other_seed) > 0.1


@pytest.mark.parametrize("family", ["wan", "ltx"])
def test_a_clip_past_its_time_limit_stops_between_steps(tiny_video, family):
    folder = tiny_video.wan_folder if family == "wan" else tiny_video.ltx_folder
    animator = Animator(settings_for(folder, steps=4))
    steps: list[int] = []
    with pytest.raises(ClipTimeout, match="longer than the 0-second limit"):
        animator.run(picture(), prompt="clay", seed=1, on_step=lambda done, total: steps.append(done),
                     time_limit=0.0)
    assert steps == [1]  # the step running when time ran out finished; no other began


@pytest.mark.parametrize("family", ["wan", "ltx"])
def test_clip_to_mp4_plays_as_h264_on_twos_without_sound(animators, family):
    animator = animators[family]
    clip = animator.run(picture(), prompt="clay", seed=2)
    encoded = encode_mp4(clip.frames, clip.fps, hold=2)

    with av.open(io.BytesIO(encoded.data)) as container:
        stream = container.streams.video[0]
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        assert stream.codec_context.name == "h264" and stream.average_rate == 16
        assert len(container.streams.audio) == 0
    assert len(decoded) == 2 * FRAMES and decoded[0].shape == clip.frames[0].shape
    # Each picture held for two frames. (How close a decoded frame is to its source is pinned in test_clip.py on
    # frames made to be compared; the random models' frames are noise, which H.264 keeps only roughly.)
    assert mean_error(decoded[0], decoded[1]) < 2.0


@pytest.mark.parametrize(("image", "prompt", "size"), [
    (Image.new("L", (1, 1), 90), "", (64, 64)),  # one grey pixel, no prompt: scaled up to the configured size
    (Image.new("RGBA", (800, 100), (10, 200, 30, 0)), "clay, " * 2000, (160, 32)),  # 8:1, transparent, a huge prompt
    (Image.new("P", (30, 90)), "ünïcödé 粘土 🎬", (32, 96)),
])
def test_odd_pictures_and_prompts_still_make_clips(animators, image, prompt, size):
    clip = animators["wan"].run(image, prompt=prompt, seed=0)
    assert clip.frames.shape == (FRAMES, size[1], size[0], 3)


def test_an_older_ltx_folder_loads_as_ltx_image_to_video(tiny_video, tmp_path):
    folder = tmp_path / "ltx-0.9.1"
    shutil.copytree(tiny_video.ltx_folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "LTXPipeline"}))

    animator = Animator(settings_for(folder))
    assert type(animator.pipe).__name__ == "LTXImageToVideoPipeline"
    assert animator.run(picture(), prompt="clay", seed=1).frames.shape[0] == FRAMES


def test_frames_the_loaded_model_cannot_make_stop_the_start_naming_the_key(tiny_video):
    with pytest.raises(ModelError, match=r"animate\.frames: ltx makes 8k\+1 frames .* set 9 or 17"):
        Animator(settings_for(tiny_video.ltx_folder, frames=13))  # 4k+1 is fine for Wan, not for LTX


def test_a_family_that_does_not_match_the_model_is_refused(tiny_video):
    with pytest.raises(ModelError, match=r"animate\.family = 'ltx', but animate\.model is a wan model"):
        Animator(settings_for(tiny_video.wan_folder, family="ltx"))


def test_a_folder_that_is_not_an_image_to_video_pipeline_is_refused(tmp_path):
    with pytest.raises(ModelError, match="animate.model: .* has no model_index.json"):
        Animator(settings_for(tmp_path))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(ModelError, match="holds a StableDiffusionXLPipeline pipeline"):
        Animator(settings_for(tmp_path))
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot be read"):
        Animator(settings_for(tmp_path))


def test_the_tiny_tokenizer_loads_through_auto_tokenizer(tiny_video):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_video.wan_folder / "tokenizer")
    ids = tokenizer("Clay cat, 1girl!", padding="max_length", max_length=24, truncation=True).input_ids
    assert len(ids) == 24 and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Clay cat, 1girl!"
    assert len(tokenizer) == len(build_tokenizer())


def test_family_of_pipeline_class_names():
    assert family_of("WanImageToVideoPipeline") == "wan" and family_of("WanPipeline") == "wan"
    assert family_of("LTXConditionPipeline") == "ltx" and family_of("LTXImageToVideoPipeline") == "ltx"
    assert family_of("LTX2ImageToVideoPipeline") is None and family_of("StableVideoDiffusionPipeline") is None


def test_motion_prompt_is_the_styles_then_the_pictures_tags():
    style = StyleSettings()
    assert motion_prompt(style, ["1girl", " smile "]) == \
        "claymation stop-motion animation, subtle natural movement, 1girl, smile"
    custom = StyleSettings.model_validate({"animate": {"prompt": "clay waves gently"}})
    assert motion_prompt(custom, []) == "clay waves gently"


# -- config ------------------------------------------------------------------------------------------------------


def load(raw: dict, tmp_path, check_models: bool = False):
    return parse_config(raw, base_dir=tmp_path, check_models=check_models)


def test_animate_is_off_by_default_and_its_default_fits_both_families(tmp_path):
    config = load({}, tmp_path)
    assert config.animate.enabled is False
    assert config.animate.model == "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
    assert "animate.model" not in config.model_specs()  # many GB: not fetched while clips are off
    for family in ("wan", "ltx"):
        load({"animate": {"family": family}}, tmp_path)  # 73 frames = 4·18 + 1 = 8·9 + 1
    assert config.animate.seconds == pytest.approx(73 / 24)


@pytest.mark.parametrize(("family", "frames", "choices"), [("wan", 50, "49 or 53"), ("ltx", 50, "49 or 57"),
                                                          ("ltx", 3, "9"), ("wan", 81, None)])
def test_frame_counts_the_family_cannot_make_are_refused_with_the_nearest(tmp_path, family, frames, choices):
    raw = {"animate": {"family": family, "frames": frames}}
    if choices is None:
        assert load(raw, tmp_path).animate.frames == frames
        return
    with pytest.raises(ConfigError, match=rf"animate\.frames: {family} makes .* does not round it: set {choices}"):
        load(raw, tmp_path)


def test_an_enabled_local_model_is_checked_and_made_absolute(tmp_path):
    with pytest.raises(ConfigError, match="animate.model: no file or folder"):
        load({"animate": {"enabled": True, "model": "./video/wan"}}, tmp_path, check_models=True)
    (tmp_path / "video" / "wan").mkdir(parents=True)
    config = load({"animate": {"enabled": True, "model": "./video/wan"}}, tmp_path, check_models=True)
    assert config.animate.model == str(tmp_path / "video" / "wan")
    assert config.gpu().animate == config.animate  # the worker gets it


@pytest.mark.parametrize(("raw", "message"), [
    ({"animate": {"fps": 0}}, "animate.fps"),
    ({"animate": {"family": "svd"}}, "animate.family"),
    ({"animate": {"max_mb": 0}}, "animate.max_mb"),
    ({"animate": {"max_mb": 51}}, "animate.max_mb"),  # no chat takes more, and the worker link's frames stay small
    ({"animate": {"hold": "twos"}}, "animate.hold: must be true or false"),
    ({"animate": {"motion": "x"}}, "unknown key 'animate.motion'"),
    ({"styles": {"clay": {"animate": {"promt": "x"}}}}, r"unknown key 'styles\.clay\.animate\.promt' "
                                                         r"\(allowed here: prompt, negative_prompt\)"),
])
def test_animate_mistakes_name_their_key(tmp_path, raw, message):
    with pytest.raises(ConfigError, match=message):
        load(raw, tmp_path)


def test_max_mb_is_counted_in_mebibytes_as_discord_does(tmp_path):
    assert load({}, tmp_path).animate.max_bytes == 10 * 1024 * 1024


def test_the_tiny_models_config_makes_clips_with_the_tiny_wan(tiny_video, tmp_path):
    from bot.cli import ROOT_CONFIG, tiny_config_text
    from pipeline.gpu.tiny import TinyModels

    # Only the [animate] table matters here: the picture models' paths are not opened.
    pictures = TinyModels(*(tmp_path / name for name in ("sdxl", "sdxl.safetensors", "k.safetensors",
                                                         "d.safetensors", "wd14", "speed.safetensors")))
    text = tiny_config_text(ROOT_CONFIG.read_text(encoding="utf-8"), pictures, tiny_video)
    config = parse_config(tomllib.loads(text), base_dir=tmp_path, check_models=False)

    assert config.animate.enabled and config.animate.model == str(tiny_video.wan_folder)
    animator = Animator(config.gpu())
    clip = animator.run(Image.open(ROOT / "examples" / "photo.jpg"), prompt="clay", seed=1)
    assert clip.frames.shape == (9, 96, 128, 3) and clip.fps == 8
