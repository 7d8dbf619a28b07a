"""The whole GPU-side flow on tiny models, with diffusers and onnxruntime running for real."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core.images import decode_photo
from pipeline.core.settings import StyleSettings
from pipeline.gpu.stylizer import Photo, Stylizer
from tests.conftest import photo_bytes, with_pipeline

MAX_PIXELS = 40_000_000


def _settings(tiny_config, **pipeline_changes):
    return with_pipeline(tiny_config.gpu(), **pipeline_changes)


def _with_styles(settings, styles: dict[str, StyleSettings]):
    return settings.model_copy(update={"styles": styles})


@pytest.fixture(scope="module")
def stylizer(tiny_config) -> Stylizer:
    """The tiny config's stylizer: single-file SDXL, kohya clay LoRA fused, tiny WD14 tagger."""
    return Stylizer(tiny_config.gpu())


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return decode_photo(photo_bytes((128, 96)), max_pixels=MAX_PIXELS)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255.0


def _run(stylizer: Stylizer, photo: Image.Image, style="clay", strength=0.5, seed=7, **kwargs):
    return stylizer.run([Photo(photo, seed)], style=style, strength=strength, **kwargs)[0]


def test_result_keeps_the_photo_aspect_ratio_and_reports_what_was_done(stylizer, photo):
    result = _run(stylizer, photo)
    assert result.image.size[0] / result.image.size[1] == pytest.approx(128 / 96, rel=0.02)
    assert result.prompt.startswith("(Clay Animation, Clay:2)")
    assert result.seed == 7
    assert set(result.timings) == {"tag", "prompt", "denoise"}
    assert set(result.ratings) == {"general", "sensitive", "questionable", "explicit"}


def test_same_seed_same_image_and_other_seed_other_image(stylizer, photo):
    first, again, other = (_run(stylizer, photo, seed=s) for s in (3, 3, 4))
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert not np.array_equal(np.asarray(first.image), np.asarray(other.image))


def test_thirty_steps_at_strength_half_run_fifteen_unet_steps(tiny_config, photo):
    stylizer = Stylizer(_settings(tiny_config, steps=30))
    calls = []
    hook = stylizer.pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    progress: list[tuple[int, int]] = []
    try:
        _run(stylizer, photo, strength=0.5, on_step=lambda i, n: progress.append((i, n)))
    finally:
        hook.remove()
    assert len(calls) == 15
    assert progress == [(i, 15) for i in range(1, 16)]


def test_changing_a_loaded_stylizers_steps_is_one_call_and_the_next_picture_runs_them(stylizer, photo):
    # A benchmark sweeping step counts changes them on the loaded worker, with no model reloaded.
    before = stylizer.settings.pipeline.steps
    progress: list[tuple[int, int]] = []
    try:
        for steps, strength, expected in ((6, 1.0, 6), (24, 0.5, 12)):
            stylizer.set_steps(steps)
            progress.clear()
            _run(stylizer, photo, strength=strength, on_step=lambda i, n: progress.append((i, n)))
            assert progress == [(i, expected) for i in range(1, expected + 1)]
        with pytest.raises(ValueError, match="steps"):
            stylizer.set_steps(0)
        assert stylizer.settings.pipeline.steps == 24  # a refused count changes nothing
    finally:
        stylizer.set_steps(before)


def test_strength_zero_returns_the_photo(stylizer, photo):
    result = _run(stylizer, photo, strength=0.0)
    expected = photo.resize(result.image.size, Image.Resampling.LANCZOS)
    assert np.abs(_pixels(result.image) - _pixels(expected)).max() < 1e-6


def _vae_round_trip(stylizer: Stylizer, photo: Image.Image) -> Image.Image:
    """The photo as img2img starts from it: at the working size, through the VAE and back. Random tiny VAE weights
    lose most of a photo on the way, so this, not the photo itself, is what denoising moves away from."""
    pipe = stylizer.pipe
    work = photo.resize(stylizer.settings.pipeline.work_size(*photo.size), Image.Resampling.LANCZOS)
    with torch.inference_mode():
        latents = pipe.vae.encode(pipe.image_processor.preprocess(work)).latent_dist.mode()
        return pipe.image_processor.postprocess(pipe.vae.decode(latents).sample)[0]


def test_higher_strength_moves_further_from_the_photo(stylizer, photo):
    low, high = (_run(stylizer, photo, strength=s) for s in (0.3, 0.9))
    reference = _pixels(_vae_round_trip(stylizer, photo).resize(low.image.size, Image.Resampling.LANCZOS))
    assert np.abs(_pixels(high.image) - reference).mean() > np.abs(_pixels(low.image) - reference).mean()


def test_exif_orientation_6_gives_a_portrait_result(stylizer):
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = decode_photo(photo_bytes((128, 96), exif=exif.tobytes()), max_pixels=MAX_PIXELS)
    result = _run(stylizer, photo)
    assert result.image.height > result.image.width


def test_trigger_weight_changes_the_embeddings_of_both_encoders(stylizer):
    weighted = stylizer.encode(["(claymation style:2), dog"], "", style="clay")
    plain = stylizer.encode(["claymation style, dog"], "", style="clay")
    width_1 = stylizer.pipe.text_encoder.config.hidden_size
    left_changed = not torch.allclose(weighted.prompt_embeds[..., :width_1], plain.prompt_embeds[..., :width_1])
    right_changed = not torch.allclose(weighted.prompt_embeds[..., width_1:], plain.prompt_embeds[..., width_1:])
    assert left_changed and right_changed


def test_prompts_over_77_tokens_keep_their_later_tags(stylizer):
    # The tiny tokenizer reads one token per character, so this prompt is several 77-token windows long.
    head = "(claymation style:2), " + ", ".join(f"tag{i}" for i in range(40))
    dog = stylizer.encode([head + ", dog"], "", style="clay")
    cat = stylizer.encode([head + ", cat"], "", style="clay")
    assert dog.prompt_embeds.shape[1] > 77
    assert not torch.allclose(dog.prompt_embeds, cat.prompt_embeds)


def test_batch_with_different_tags_gives_one_result_per_photo(stylizer, photo):
    other = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).point(lambda v: 255 - v)
    results = stylizer.run([Photo(photo, 1), Photo(other, 2)], style="clay", strength=0.5)
    assert [r.seed for r in results] == [1, 2]
    assert not np.array_equal(np.asarray(results[0].image), np.asarray(results[1].image))


def test_a_batch_must_share_its_working_size(stylizer, photo):
    tall = photo.transpose(Image.Transpose.ROTATE_90).resize((40, 160))
    with pytest.raises(ValueError, match="one working size"):
        stylizer.run([Photo(photo, 1), Photo(tall, 2)], style="clay", strength=0.5)


# -- the LoRA ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def no_lora_image(tiny_config, photo) -> np.ndarray:
    base = tiny_config.gpu()
    clay = base.styles["clay"].model_copy(update={"lora": ""})
    return _pixels(_run(Stylizer(_with_styles(base, {"clay": clay})), photo).image)


@pytest.mark.parametrize("lora_format", ["kohya", "diffusers"])
def test_lora_in_each_format_changes_the_output(tiny_config, tiny_models, photo, no_lora_image, lora_format):
    base = tiny_config.gpu()
    path = tiny_models.lora_kohya if lora_format == "kohya" else tiny_models.lora_diffusers
    clay = base.styles["clay"].model_copy(update={"lora": str(path)})
    with_lora = _pixels(_run(Stylizer(_with_styles(base, {"clay": clay})), photo).image)
    assert np.abs(with_lora - no_lora_image).mean() > 1e-3


def test_fused_lora_equals_the_unfused_adapter(tiny_config, stylizer, photo):
    # With a second style the LoRAs stay switchable adapters (unfused); alone it is fused into the weights.
    base = tiny_config.gpu()
    styles = {"clay": base.styles["clay"], "plain": StyleSettings(trigger_words="plain")}
    unfused = Stylizer(_with_styles(base, styles))
    assert not unfused._fused_all and stylizer._fused_all
    fused_image = _pixels(_run(stylizer, photo).image)
    unfused_image = _pixels(_run(unfused, photo).image)
    # 8-bit output: a float difference of 1e-7 may still flip a rounding here and there, hence the mean.
    assert np.abs(fused_image - unfused_image).mean() < 1e-4


def test_styles_switch_their_loras_per_call(tiny_config, photo, no_lora_image):
    base = tiny_config.gpu()
    plain = base.styles["clay"].model_copy(update={"lora": ""})
    both = Stylizer(_with_styles(base, {"clay": base.styles["clay"], "plain": plain}))
    clay_first = _pixels(_run(both, photo, style="clay").image)
    plain_after = _pixels(_run(both, photo, style="plain").image)
    clay_again = _pixels(_run(both, photo, style="clay").image)
    assert np.abs(plain_after - no_lora_image).mean() < 1e-4
    assert np.abs(clay_again - clay_first).mean() < 1e-4
    assert np.abs(clay_first - plain_after).mean() > 1e-3


def test_diffusers_folder_and_single_file_give_the_same_image(tiny_config, tiny_models, stylizer, photo):
    from_folder = Stylizer(_settings(tiny_config, base_model=str(tiny_models.sdxl_folder)))
    a = _pixels(_run(from_folder, photo).image)
    b = _pixels(_run(stylizer, photo).image)
    assert np.abs(a - b).mean() < 1e-4


def test_before_after_style_answers_photo_and_result_side_by_side(tiny_config, stylizer, photo):
    base = tiny_config.gpu()
    clay = base.styles["clay"].model_copy(update={"before_after": True})
    both = Stylizer(_with_styles(base, {"clay": clay}))
    alone = _run(stylizer, photo).image
    pair = _run(both, photo).image
    assert pair.size == (2 * alone.width, alone.height)
    before = photo.resize(alone.size, Image.Resampling.LANCZOS)
    assert np.abs(_pixels(pair.crop((0, 0, alone.width, alone.height))) - _pixels(before)).max() < 1e-6
    assert np.abs(_pixels(pair.crop((alone.width, 0, pair.width, alone.height))) - _pixels(alone)).mean() < 1e-4


def test_each_photo_of_a_batch_gets_its_own_trigger_weight(stylizer, photo):
    results = stylizer.run([Photo(photo, 1, trigger_weight=1.0), Photo(photo, 1, trigger_weight=2.0)],
                           style="clay", strength=0.5)
    assert results[0].prompt.startswith("Clay Animation, Clay, ")
    assert results[1].prompt.startswith("(Clay Animation, Clay:2), ")
    assert not np.array_equal(np.asarray(results[0].image), np.asarray(results[1].image))
