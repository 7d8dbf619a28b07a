"""Speed presets: a few-step LoRA beside the style's, its sampler, guidance and steps — on the tiny models, for real.

What a user would check: the fast preset really runs its few UNet evaluations (counted with a forward hook, and
without guidance: one latent per photo per call), under the sampler it asked for, with both LoRAs acting; the
default preset gives the very same bytes as a worker that has no presets at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bot.config import ConfigError, parse_config
from pipeline.core.images import decode_photo
from pipeline.core.intake import take_in
from pipeline.core.jobs import BadRequest, Done
from pipeline.core.settings import SpeedSettings, StyleSettings
from pipeline.core.sheet import cell_box, sheet_size
from pipeline.gpu.speed import nominal_steps
from tests.conftest import photo_bytes, submit, with_pipeline

PHOTO = photo_bytes((128, 96))


# -- nominal steps: img2img runs int(nominal × strength) ----------------------------------------------------------


def test_four_steps_at_strength_half_are_eight_nominal():
    assert nominal_steps(4, 0.5) == 8
    assert nominal_steps(4, 1.0) == 4
    assert nominal_steps(4, 0.3) == 14  # int(14 × 0.3) = 4, int(13 × 0.3) = 3


@pytest.mark.parametrize("steps", [1, 2, 4, 6, 8])
def test_the_intended_steps_run_at_every_strength_users_may_ask(steps):
    for hundredths in range(5, 101):
        strength = hundredths / 100
        nominal = nominal_steps(steps, strength)
        assert int(nominal * strength) == steps, (steps, strength, nominal)
        assert nominal == steps or int((nominal - 1) * strength) < steps, (steps, strength)  # the smallest


def test_awkward_floats_and_tiny_strengths_are_guarded():
    for strength in (0.1, 0.7, 0.35, 1 / 3, 0.29, 0.57, 0.007):
        nominal = nominal_steps(4, strength)
        assert int(nominal * strength) == 4
    # LCM and TCD accept at most 50 nominal steps: at 0.05 that runs 2 steps, not a scheduler error.
    assert nominal_steps(4, 0.05, limit=50) == 50 and int(50 * 0.05) == 2
    assert nominal_steps(4, 0.0007) == 1000  # capped at the training timesteps: int(0.7) = 0 steps → the photo
    assert nominal_steps(4, 0.0) == 4  # strength 0 runs nothing anyway (the photo is answered)
    with pytest.raises(ValueError):
        nominal_steps(0, 0.5)


# -- config ----------------------------------------------------------------------------------------------------------


def _raw(tiny_models, **speed) -> dict:
    return {"pipeline": {"base_model": str(tiny_models.sdxl_single_file), "base_config": str(tiny_models.sdxl_folder)},
            "tagger": {"model": str(tiny_models.tagger_folder)},
            "styles": {"clay": {"lora": str(tiny_models.lora_kohya)}},
            "speed": speed}


@pytest.mark.parametrize(("preset", "message"), [
    ({"guidance_scale": 2.0}, r"speed\.fast\.guidance_scale: Input should be less than or equal to 1\.5"),
    ({"scheduler": "dpm"}, r"speed\.fast\.scheduler: .*'lcm'"),
    ({"steps": 0}, r"speed\.fast\.steps"),
    ({"lora_scale": -1.0}, r"speed\.fast\.lora_scale"),
    ({"sampler": "lcm"}, r"unknown key 'speed\.fast\.sampler' \(allowed here: lora, lora_scale, scheduler"),
    ({"lora": "missing.safetensors"}, r"speed\.fast\.lora: no file or folder at .*missing\.safetensors"),
])
def test_a_bad_preset_stops_start_up_naming_its_key(tiny_models, tmp_path, preset, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(_raw(tiny_models, fast=preset), base_dir=tmp_path)


def test_presets_and_styles_must_name_each_other(tiny_models, tmp_path):
    with pytest.raises(ConfigError, match=r"speed\.default: the name is taken by the built-in preset"):
        parse_config(_raw(tiny_models, default={}), base_dir=tmp_path)
    raw = _raw(tiny_models, fast={})
    raw["styles"]["clay"]["speed"] = "turbo"
    with pytest.raises(ConfigError, match=r"styles\.clay\.speed = 'turbo' names no speed preset \(have: default, fast"):
        parse_config(raw, base_dir=tmp_path)
    for name in ("Fast Mode", "8", "4-step!"):  # users type it; "8" would read as a strength
        with pytest.raises(ConfigError, match=rf"speed\.{name}: a preset name is a lowercase letter"):
            parse_config(_raw(tiny_models, **{name: {}}), base_dir=tmp_path)


def test_a_relative_speed_lora_is_found_beside_the_config(tiny_models):
    raw = _raw(tiny_models, fast={"lora": tiny_models.speed_lora.name})
    config = parse_config(raw, base_dir=tiny_models.speed_lora.parent)
    assert config.speed["fast"].lora == str(tiny_models.speed_lora)
    assert config.gpu().speed["fast"].lora == str(tiny_models.speed_lora)
    assert config.model_specs()["speed.fast.lora"] == str(tiny_models.speed_lora)


# -- intake ----------------------------------------------------------------------------------------------------------


async def test_an_unknown_preset_is_refused_with_the_ones_there_are(tiny_config):
    with pytest.raises(BadRequest, match=r"There is no speed preset called 'turbo'; try: default, fast\."):
        await take_in(tiny_config.gpu(), PHOTO, options={"speed": "turbo"})
    with pytest.raises(BadRequest, match="no speed preset"):
        await take_in(tiny_config.gpu(), PHOTO, options={"speed": "x" * 10_000})


async def test_presets_come_from_the_request_or_else_the_style_and_never_share_a_batch(tiny_config):
    gpu = tiny_config.gpu()
    default = await take_in(gpu, PHOTO)
    fast = await take_in(gpu, PHOTO, options={"speed": "fast"})
    assert (default.spec.speed, fast.spec.speed) == ("default", "fast")
    assert default.batch_key != fast.batch_key
    fast_style = gpu.model_copy(update={"styles": {"clay": gpu.styles["clay"].model_copy(update={"speed": "fast"})}})
    assert (await take_in(fast_style, PHOTO)).spec.speed == "fast"
    assert (await take_in(fast_style, PHOTO, options={"speed": "default"})).spec.speed == "default"


# -- the stylizer, for real ------------------------------------------------------------------------------------------


def _gpu(tiny_config, tiny_models, *, styles=None, **presets):
    gpu = tiny_config.gpu()
    speed = {name: SpeedSettings(**fields) for name, fields in presets.items()}
    return gpu.model_copy(update={"speed": speed, **({"styles": styles} if styles else {})})


FAST = {"scheduler": "euler_trailing", "guidance_scale": 0.0, "steps": 4}


@pytest.fixture(scope="module")
def photo():
    return decode_photo(PHOTO, max_pixels=40_000_000)


@pytest.fixture(scope="module")
def presets_stylizer(tiny_config, tiny_models):
    """One style (its LoRA fused) and a preset per sampler, each with the speed LoRA; plus one without a LoRA."""
    from pipeline.gpu.stylizer import Stylizer

    lora = str(tiny_models.speed_lora)
    return Stylizer(_gpu(tiny_config, tiny_models,
                         fast={**FAST, "lora": lora},
                         lcm={**FAST, "scheduler": "lcm", "guidance_scale": 1.0, "lora": lora},
                         tcd={**FAST, "scheduler": "tcd", "lora": lora},
                         ddim={**FAST, "scheduler": "ddim_trailing", "lora": lora},
                         cfg={**FAST, "guidance_scale": 1.5, "lora": lora},
                         sampler_only=FAST))


class UnetCalls:
    """Every UNet forward of a run: its batch size, and the scheduler the pipeline held at the time."""

    def __init__(self, stylizer) -> None:
        self.stylizer = stylizer
        self.calls: list[tuple[int, str, str]] = []

    def __enter__(self):
        pipe = self.stylizer.pipe

        def hook(module, args, kwargs, output):
            sample = args[0] if args else kwargs["sample"]
            scheduler = pipe.scheduler
            self.calls.append((sample.shape[0], type(scheduler).__name__, scheduler.config.timestep_spacing))

        self.handle = pipe.unet.register_forward_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def _run(stylizer, photo, *, speed="default", style="clay", strength=0.5, seed=7, **kwargs):
    from pipeline.gpu.stylizer import Photo

    return stylizer.run([Photo(photo, seed)], style=style, strength=strength, speed=speed, **kwargs)[0]


def _digest(result) -> str:
    return hashlib.sha256(result.image.tobytes()).hexdigest()


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


@pytest.mark.parametrize("strength", [0.3, 0.5, 0.8, 1.0])
def test_fast_preset_runs_exactly_four_unet_evaluations_without_guidance(presets_stylizer, photo, strength):
    progress: list[tuple[int, int]] = []
    with UnetCalls(presets_stylizer) as unet:
        result = _run(presets_stylizer, photo, speed="fast", strength=strength,
                      on_step=lambda i, n: progress.append((i, n)))
    # 4 forwards, each on ONE latent (guidance off: no unconditional half), under Euler with trailing timesteps.
    assert unet.calls == [(1, "EulerDiscreteScheduler", "trailing")] * 4
    assert progress == [(i, 4) for i in range(1, 5)]
    assert result.image.size[0] / result.image.size[1] == pytest.approx(128 / 96, rel=0.02)
    assert type(presets_stylizer.pipe.scheduler).__name__ == "EulerDiscreteScheduler"  # the base one's back


def test_a_call_sets_its_adapters_once_for_the_prompt_and_the_denoising(presets_stylizer, photo, monkeypatch):
    # Setting adapters walks every LoRA layer of the UNet and both text encoders: once per picture, not per stage.
    pipe, calls = presets_stylizer.pipe, []
    set_adapters = pipe.set_adapters

    def spy(names, adapter_weights=None):
        calls.append((list(names), list(adapter_weights)))
        return set_adapters(names, adapter_weights=adapter_weights)

    monkeypatch.setattr(pipe, "set_adapters", spy)
    with UnetCalls(presets_stylizer) as unet:
        _run(presets_stylizer, photo, speed="fast")
    assert calls == [(["speed_fast"], [1.0])]
    assert len(unet.calls) == 4


def test_default_preset_still_runs_its_guided_steps(presets_stylizer, photo, tiny_config):
    with UnetCalls(presets_stylizer) as unet:
        _run(presets_stylizer, photo, strength=0.5)
    steps = int(tiny_config.pipeline.steps * 0.5)
    assert unet.calls == [(2, "EulerDiscreteScheduler", "leading")] * steps  # CFG: a batch of 2 per step


@pytest.mark.parametrize(("preset", "scheduler", "batch"), [
    ("lcm", "LCMScheduler", 1), ("tcd", "TCDScheduler", 1), ("ddim", "DDIMScheduler", 1),
    ("cfg", "EulerDiscreteScheduler", 2),  # guidance 1.5 (> 1) keeps classifier-free guidance on
])
def test_each_preset_runs_under_its_own_sampler(presets_stylizer, photo, preset, scheduler, batch):
    with UnetCalls(presets_stylizer) as unet:
        result = _run(presets_stylizer, photo, speed=preset, strength=0.6)
    assert [(b, name) for b, name, _ in unet.calls] == [(batch, scheduler)] * 4
    assert np.isfinite(_pixels(result.image)).all()


def test_a_strength_too_low_for_the_schedule_runs_what_it_can(presets_stylizer, photo):
    # LCM schedules at most 50 nominal steps: at strength 0.05 that is int(50 × 0.05) = 2 steps, not a crash.
    with UnetCalls(presets_stylizer) as unet:
        _run(presets_stylizer, photo, speed="lcm", strength=0.05)
    assert [name for _, name, _ in unet.calls] == ["LCMScheduler"] * 2
    with UnetCalls(presets_stylizer) as unet:
        result = _run(presets_stylizer, photo, speed="fast", strength=0.0)
    assert unet.calls == [] and result.image.size[0] > 0


def test_an_unknown_preset_at_the_stylizer_is_a_clear_error(presets_stylizer, photo):
    with pytest.raises(ValueError, match="no speed preset 'turbo'"):
        _run(presets_stylizer, photo, speed="turbo")


def test_the_speed_lora_acts_under_its_preset_only(presets_stylizer, photo):
    with_lora = _run(presets_stylizer, photo, speed="fast")
    sampler_only = _run(presets_stylizer, photo, speed="sampler_only")  # same sampler and steps, no speed LoRA
    assert np.abs(_pixels(with_lora.image) - _pixels(sampler_only.image)).mean() > 1.0
    default_before = _run(presets_stylizer, photo)
    _run(presets_stylizer, photo, speed="fast")
    assert _digest(_run(presets_stylizer, photo)) == _digest(default_before)  # fast left nothing behind
    assert _digest(_run(presets_stylizer, photo, speed="fast")) == _digest(with_lora)


def test_default_preset_gives_the_same_bytes_as_a_worker_without_presets(tiny_config, tiny_models, presets_stylizer,
                                                                        photo):
    from pipeline.gpu.stylizer import Stylizer

    plain = Stylizer(_gpu(tiny_config, tiny_models))  # no [speed.*] at all: nothing of this feature is loaded
    assert not plain.speed.loaded
    for strength in (0.3, 0.5, 0.8):
        assert _digest(_run(presets_stylizer, photo, strength=strength)) == \
            _digest(_run(plain, photo, strength=strength)), strength
    # and it is the LoRA-carrying pipeline that changed nothing: a fast run differs from that same default
    assert _digest(_run(presets_stylizer, photo, speed="fast")) != _digest(_run(plain, photo))


def test_both_loras_act_together_beside_switchable_styles(tiny_config, tiny_models, photo):
    """Two styles (so their LoRAs stay adapters): clay's LoRA plus the speed LoRA differ from either alone."""
    from pipeline.gpu.stylizer import Stylizer

    clay = tiny_config.styles["clay"]
    styles = {"clay": clay, "plain": StyleSettings(**{**clay.model_dump(), "lora": ""})}
    lora = str(tiny_models.speed_lora)
    stylizer = Stylizer(_gpu(tiny_config, tiny_models, styles=styles, fast={**FAST, "lora": lora},
                             sampler_only=FAST))
    both = _run(stylizer, photo, speed="fast")
    style_only = _run(stylizer, photo, speed="sampler_only")
    speed_only = _run(stylizer, photo, speed="fast", style="plain")
    for other in (style_only, speed_only):
        assert np.abs(_pixels(both.image) - _pixels(other.image)).mean() > 1.0
    assert np.abs(_pixels(style_only.image) - _pixels(speed_only.image)).mean() > 1.0

    plain = Stylizer(_gpu(tiny_config, tiny_models, styles=styles))
    for style in ("clay", "plain"):
        assert _digest(_run(stylizer, photo, style=style)) == _digest(_run(plain, photo, style=style)), style


def test_speed_lora_scale_is_its_own(tiny_config, tiny_models, photo):
    from pipeline.gpu.stylizer import Stylizer

    lora = str(tiny_models.speed_lora)
    stylizer = Stylizer(_gpu(tiny_config, tiny_models, full={**FAST, "lora": lora},
                             half={**FAST, "lora": lora, "lora_scale": 0.5},
                             zero={**FAST, "lora": lora, "lora_scale": 0.0}, none=FAST))
    full, half, zero, none = (_run(stylizer, photo, speed=name) for name in ("full", "half", "zero", "none"))
    assert np.abs(_pixels(full.image) - _pixels(half.image)).mean() > 0.5
    assert np.abs(_pixels(half.image) - _pixels(none.image)).mean() > 0.5
    assert np.abs(_pixels(zero.image) - _pixels(none.image)).max() <= 1  # at scale 0 the LoRA adds nothing


# -- through the queue and the worker ------------------------------------------------------------------------------


async def test_fast_and_default_jobs_never_share_a_batch(tiny_config):
    from pipeline.core.local import LocalQueue

    queue = LocalQueue(tiny_config.gpu(), tiny_config.queue.model_copy(update={"batch_window": 2.0}))
    await queue.start()
    try:
        await queue.wait_ready(timeout=120)
        handles = [await submit(queue, PHOTO, seed=s, speed=speed)
                   for s, speed in ((1, "fast"), (2, None), (3, "fast"), (4, None))]
        done = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 180)
        assert sorted(queue.stats.batches) == [2, 2]
    finally:
        await queue.close(grace=5)
    assert [d.speed for d in done] == ["fast", "default", "fast", "default"]
    assert all(isinstance(d, Done) for d in done)


# -- the command line and the tiny models ---------------------------------------------------------------------------


def _claybot(*args, expect: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([Path(sys.executable).parent / "claybot", *map(str, args)], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == expect, out.stderr[-3000:]
    return out


def test_tiny_models_write_a_unet_only_kohya_speed_lora_and_a_fast_preset(tiny_models, tiny_config):
    from safetensors.torch import load_file

    state = load_file(str(tiny_models.speed_lora))
    assert state and all(key.startswith("lora_unet_") for key in state)  # distillation LoRAs train the UNet only
    modules = {key.split(".", 1)[0] for key in state}
    assert set(state) == {f"{m}.{part}" for m in modules for part in ("lora_down.weight", "lora_up.weight", "alpha")}
    clay = load_file(str(tiny_models.lora_kohya))
    shared = [key for key in state if key in clay and key.endswith("lora_up.weight")]
    assert shared and not any(torch.equal(state[key], clay[key]) for key in shared)  # its own random weights
    fast = tiny_config.speed["fast"]
    assert (fast.lora, fast.scheduler, fast.guidance_scale, fast.steps) == (str(tiny_models.speed_lora),
                                                                            "euler_trailing", 0.0, 4)


def test_sweep_compares_presets_row_by_row(tiny_config_path, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(photo_bytes((160, 120)))
    sheet_path, single_path = tmp_path / "sheet.png", tmp_path / "fast.png"
    out = _claybot("sweep", photo, "-o", sheet_path, "--strengths", "0.5", "--weights", "2", "--presets",
                   "default,fast", "--seed", 5, "--config", tiny_config_path)
    assert "2 speed presets (default, fast)" in out.stdout
    stylized = _claybot("stylize", photo, "-o", single_path, "--strength", 0.5, "--seed", 5, "--speed", "fast",
                        "--config", tiny_config_path)
    assert "speed fast" in stylized.stdout
    sheet, single = Image.open(sheet_path), Image.open(single_path)
    cell = single.size
    assert sheet.size == sheet_size(cell, 1, 2)
    default_row = _pixels(sheet.crop(cell_box(cell, 0, 0)).convert("RGB"))
    fast_row = _pixels(sheet.crop(cell_box(cell, 0, 1)).convert("RGB"))
    assert np.abs(fast_row - _pixels(single.convert("RGB"))).mean() < 0.5  # the fast row is a fast run
    assert np.abs(fast_row - default_row).mean() > 1.0

    refused = _claybot("sweep", photo, "-o", tmp_path / "x.png", "--presets", "default,turbo", "--config",
                       tiny_config_path, expect=2)
    assert "--presets: no speed preset 'turbo' (have: default, fast)" in refused.stderr


def test_discord_clay_offers_a_speed_choice_only_when_there_are_presets():
    import discord
    from discord import app_commands

    from cogs.clay import clay_command

    tree = app_commands.CommandTree(discord.Client(intents=discord.Intents.none()))
    plain = clay_command(None, ["clay"]).to_dict(tree)
    fast = clay_command(None, ["clay"], ["default", "fast"]).to_dict(tree)
    both = clay_command(None, ["clay", "plasticine"], ["default", "fast"]).to_dict(tree)
    assert [o["name"] for o in plain["options"]] == ["image", "strength", "seed", "words"]
    assert [o["name"] for o in fast["options"]] == ["image", "strength", "seed", "speed", "words"]
    assert [o["name"] for o in both["options"]] == ["image", "strength", "seed", "style", "speed", "words"]
    assert [c["value"] for c in fast["options"][-2]["choices"]] == ["default", "fast"]
    assert fast["options"][-1]["max_length"] == 200  # Discord holds people to the words' bound
    assert all(option["description"] for option in both["options"])


@pytest.mark.parametrize(("text", "expected"), [
    ("", (None, None, None)), ("0.6", (0.6, None, None)), ("fast", (None, "fast", None)),
    ("0.6 fast", (0.6, "fast", None)), ("FAST 60%", (0.6, "fast", None)), ("60 % fast", (0.6, "fast", None)),
    ("best", (None, "default", None)), ("default 0.3", (0.3, "default", None)),
    ("turbo", (None, None, "turbo")), ("fast fast", (None, "fast", "fast")),
    ("0.6 fast as a knight", (0.6, "fast", "as a knight")), ("fast abc", (None, "fast", "abc")),
    ("0.6 2 knights,\n  in   armour", (0.6, None, "2 knights, in armour")),
])
def test_telegram_options_read_a_strength_a_preset_then_the_persons_own_words(text, expected):
    from bot.options import read_request

    request = read_request(text, ["default", "fast"])
    assert (request.options["strength"], request.options["speed"], request.options["words"]) == expected
    assert request.style is None


@pytest.mark.parametrize(("text", "message"), [
    ("fast 7", "Strength must be between"), ("7 as a knight", "Strength must be between"),
    ("0.6x as a knight", "could not read '0.6x' as a strength"),
    ("as a " + "knight " * 40, r"Your words are too long \(284 characters\): at most 200"),
    ("as a knight\x07", "invisible or control character"), ("as a \u202eknight", "U\\+202E"),
    ("x" * 100_000, "too long"),
])
def test_telegram_options_refuse_what_they_cannot_read(text, message):
    from bot.options import USAGE, UserError, read_request

    with pytest.raises(UserError, match=message) as refused:
        read_request(text, ["default", "fast"])
    assert str(refused.value).endswith(USAGE)


def test_a_style_is_read_only_first_and_without_presets_a_word_is_the_persons_own():
    from bot.options import read_request

    request = read_request("likeness as a knight", ["default"], ["clay", "likeness"])
    assert (request.style, request.options["words"]) == ("likeness", "as a knight")
    request = read_request("as a likeness", ["default"], ["clay", "likeness"])
    assert (request.style, request.options["words"]) == (None, "as a likeness")
    assert read_request("fast", ["default"]).options == {"strength": None, "speed": None, "words": "fast"}


# -- the benchmarks (figures printed, never timed assertions) ------------------------------------------------------

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_fast_preset_benchmark_counts_at_least_five_times_fewer_unet_evaluations(tmp_path):
    out = tmp_path / "fast.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "fast_preset.py"), "--repeats", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    default, fast = report["runs"]["default"], report["runs"]["fast"]
    # config.toml's 30 nominal steps × 0.5 = 15 guided steps (2 latents each) against 4 unguided ones
    assert (default["unet_calls_per_picture"], default["unet_evaluations_per_picture"]) == (15, 30)
    assert (fast["unet_calls_per_picture"], fast["unet_evaluations_per_picture"]) == (4, 4)
    assert fast["scheduler"] == ["EulerDiscrete trailing"] and default["scheduler"] == ["EulerDiscrete leading"]
    assert report["ratios"]["unet_evaluations"] == 7.5
    assert default["seconds_per_picture"] > 0 and fast["seconds_per_picture"] > 0
    assert "UNet evaluations / picture" in proc.stdout and "7.50×" in proc.stdout


def test_telegram_help_names_the_presets_only_when_there_are_some(tiny_config):
    from bot.telegram.help import help_text

    assert "/clay fast or /clay 0.6 fast is quicker" in help_text(tiny_config, "claybot_bot")
    assert "speeds:" not in help_text(tiny_config.model_copy(update={"speed": {}}), "claybot_bot")


def test_fuse_qkv_does_not_bypass_the_speed_lora(tiny_config, tiny_models, presets_stylizer, photo, caplog):
    from pipeline.gpu.stylizer import Stylizer

    gpu = _gpu(tiny_config, tiny_models, fast={**FAST, "lora": str(tiny_models.speed_lora)})
    fused = Stylizer(with_pipeline(gpu, fuse_qkv=True))
    assert "pipeline.fuse_qkv is skipped" in caplog.text
    assert _digest(_run(fused, photo, speed="fast")) == _digest(_run(presets_stylizer, photo, speed="fast"))
