"""The structure (ControlNet) and identity (IP-Adapter) guides on tiny models, diffusers running for real."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomlkit
from PIL import Image

from bot.cli import ROOT_CONFIG, tiny_config_text
from bot.config import ConfigError, load_config
from pipeline.core.errors import ModelError
from pipeline.core.images import decode_photo
from pipeline.core.settings import GpuSettings, IdentityGuide, StructureGuide, StyleSettings
from pipeline.gpu.guides import canny_image
from pipeline.gpu.stylizer import Photo, Stylizer
from tests.conftest import photo_bytes

CLAYBOT = Path(sys.executable).parent / "claybot"
WARM = (200, 120, 40)  # the tiny face detector finds a face in warm photos…
BLUE = (40, 80, 200)  # …and none in blue ones


def _photo(color=WARM, size=(128, 96)) -> Image.Image:
    return decode_photo(photo_bytes(size, color), max_pixels=40_000_000)


def _structure(tiny_models, **changes) -> StructureGuide:
    return StructureGuide(controlnet=str(tiny_models.controlnet_folder), depth_model=str(tiny_models.depth_folder),
                          **changes)


def _identity(tiny_models, detector=True, **changes) -> IdentityGuide:
    return IdentityGuide(adapter=str(tiny_models.ip_adapter), image_encoder=str(tiny_models.image_encoder_folder),
                         face_detector=str(tiny_models.face_detector) if detector else "", **changes)


def _settings(tiny_config, **styles: StyleSettings) -> GpuSettings:
    return tiny_config.gpu().model_copy(update={"styles": styles})


def _clay(tiny_config, **changes) -> StyleSettings:
    return tiny_config.gpu().styles["clay"].model_copy(update=changes)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def _run(stylizer, photos, style="clay", strength=0.5, seed=7, **photo_changes) -> list[np.ndarray]:
    photos = photos if isinstance(photos, list) else [photos]
    batch = [Photo(p, seed + i, **photo_changes) for i, p in enumerate(photos)]
    return [_pixels(r.image) for r in stylizer.run(batch, style=style, strength=strength)]


@pytest.fixture(scope="module")
def plain(tiny_config) -> Stylizer:
    return Stylizer(tiny_config.gpu())


@pytest.fixture(scope="module")
def depth(tiny_config, tiny_models) -> Stylizer:
    return Stylizer(_settings(tiny_config, clay=_clay(tiny_config, structure=_structure(tiny_models))))


@pytest.fixture(scope="module")
def identity(tiny_config, tiny_models) -> Stylizer:
    return Stylizer(_settings(tiny_config, clay=_clay(tiny_config, identity=_identity(tiny_models))))


# -- must show: on differs from off, scale 0 equals off -----------------------------------------------------------


def test_depth_structure_guide_changes_the_picture_and_scale_zero_equals_off(plain, depth):
    photo = _photo()
    [off], [on], [zero] = _run(plain, photo), _run(depth, photo), _run(depth, photo, structure_scale=0.0)
    assert np.abs(on - off).mean() > 1.0
    assert np.abs(zero - off).max() == 0


def test_canny_structure_guide_changes_the_picture_and_scale_zero_equals_off(tiny_config, tiny_models, plain):
    canny = Stylizer(_settings(tiny_config, clay=_clay(tiny_config, structure=_structure(tiny_models, kind="canny"))))
    photo = _photo()
    [off], [on], [zero] = _run(plain, photo), _run(canny, photo), _run(canny, photo, structure_scale=0.0)
    assert np.abs(on - off).mean() > 1.0
    assert np.abs(zero - off).max() == 0


def test_identity_guide_changes_the_picture_and_scale_zero_equals_off(plain, identity):
    photo = _photo(WARM)
    [off], [on], [zero] = _run(plain, photo), _run(identity, photo), _run(identity, photo, identity_scale=0.0)
    assert np.abs(on - off).mean() > 1.0
    assert np.abs(zero - off).max() == 0


def test_structure_scale_of_the_config_is_what_a_run_uses(tiny_config, tiny_models, depth):
    half = Stylizer(_settings(tiny_config, clay=_clay(tiny_config, structure=_structure(tiny_models, scale=0.3))))
    photo = _photo()
    [configured] = _run(half, photo)
    [overridden] = _run(depth, photo, structure_scale=0.3)
    [default] = _run(depth, photo)
    assert np.abs(configured - overridden).max() == 0
    assert np.abs(configured - default).mean() > 0.1


def test_the_guide_acts_only_in_its_part_of_the_steps(tiny_config, tiny_models, plain, depth):
    late = Stylizer(_settings(tiny_config, clay=_clay(tiny_config, structure=_structure(tiny_models, start=0.5))))
    photo = _photo()
    [off], [full], [half] = _run(plain, photo), _run(depth, photo), _run(late, photo)
    assert np.abs(half - full).mean() > 0.1 and np.abs(half - off).mean() > 0.1


# -- the control image comes from the photo ----------------------------------------------------------------------


def test_two_photos_give_two_control_images_of_their_size(depth):
    a, b = _photo(WARM), _photo(BLUE).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    maps = depth.guides.control_images("clay", [a, b])
    assert [m.size for m in maps] == [a.size, b.size]
    assert not np.array_equal(np.asarray(maps[0]), np.asarray(maps[1]))
    # the same photo gives the same map: it is computed from the photo, nothing else
    assert np.array_equal(np.asarray(maps[0]), np.asarray(depth.guides.control_images("clay", [a])[0]))


def test_canny_of_a_blank_photo_is_blank_and_of_a_photo_follows_its_edges():
    blank = canny_image(Image.new("RGB", (128, 96), (90, 90, 90)), 100, 200)
    assert np.asarray(blank).max() == 0
    photo = _photo()  # a colour field with a darker square from (16, 12) to (64, 48)
    edges = np.asarray(canny_image(photo, 100, 200))[..., 0] > 0
    assert edges[12:49, 14:18].any() and edges[10:14, 16:64].any()  # the square's left and top sides
    assert not edges[60:, 80:].any()  # nothing in the flat colour field
    moved = np.asarray(canny_image(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 100, 200))[..., 0] > 0
    assert not np.array_equal(edges, moved)


# -- batching, faces, styles --------------------------------------------------------------------------------------


def test_a_guided_batch_gives_each_photo_what_it_gets_alone(depth):
    a, b = _photo(WARM), _photo(BLUE)
    together = _run(depth, [a, b])
    alone = [_run(depth, a, seed=7)[0], _run(depth, b, seed=8)[0]]
    for got, expected in zip(together, alone, strict=True):
        assert np.abs(got - expected).mean() < 0.5


def test_a_photo_without_a_face_still_stylizes_without_the_identity_guide(plain, identity):
    face, no_face = _photo(WARM), _photo(BLUE)
    assert identity.guides.faces("clay", [face, no_face])[1] is None
    batch = _run(identity, [face, no_face])
    off = _run(plain, [face, no_face])
    assert batch[1].shape == off[1].shape
    assert np.abs(batch[1] - off[1]).mean() < 0.5  # the face-less photo: as if the guide were off
    assert np.abs(batch[0] - off[0]).mean() > 1.0  # the photo with a face: guided


def test_the_face_crop_is_the_detector_box_widened(identity):
    face = _photo(WARM, size=(320, 240))
    [crop] = identity.guides.faces("clay", [face])
    assert crop is not None and crop.width < face.width and crop.height < face.height


def test_without_a_detector_the_whole_photo_feeds_the_identity_guide(tiny_config, tiny_models, plain):
    whole = Stylizer(_settings(tiny_config, clay=_clay(tiny_config, identity=_identity(tiny_models, detector=False))))
    blue = _photo(BLUE)
    assert whole.guides.faces("clay", [blue]) == [blue]
    [on], [off] = _run(whole, blue), _run(plain, blue)
    assert np.abs(on - off).mean() > 1.0


def test_a_style_without_guides_is_unchanged_by_another_styles_guides(tiny_config, tiny_models):
    plain_only = Stylizer(_settings(tiny_config, clay=_clay(tiny_config), other=StyleSettings(trigger_words="x")))
    faithful = _clay(tiny_config, structure=_structure(tiny_models), identity=_identity(tiny_models))
    both = Stylizer(_settings(tiny_config, clay=_clay(tiny_config), faithful=faithful))
    photo = _photo()
    [expected] = _run(plain_only, photo)
    [clay] = _run(both, photo, style="clay")
    [guided] = _run(both, photo, style="faithful")
    [clay_again] = _run(both, photo, style="clay")
    assert np.abs(clay - expected).mean() < 1e-3  # the shared UNet carries the adapter at scale 0 for this style
    assert np.abs(clay_again - clay).max() == 0
    assert np.abs(guided - clay).mean() > 1.0


def test_progress_counts_every_step_when_a_batch_splits_by_face(identity):
    seen: list[tuple[int, int]] = []
    identity.run([Photo(_photo(WARM), 1), Photo(_photo(BLUE), 2)], style="clay", strength=0.5,
                 on_step=lambda i, n: seen.append((i, n)))
    steps = identity.settings.pipeline.steps // 2
    assert seen == [(i, 2 * steps) for i in range(1, 2 * steps + 1)]


# As thin as photos may be (8:1, pipeline.core.images.MAX_ASPECT; thinner ones are refused before the worker).
@pytest.mark.parametrize("size", [(64, 8), (8, 64), (1000, 125)])
def test_thin_and_tiny_photos_go_through_both_guides(tiny_config, tiny_models, size):
    style = _clay(tiny_config, structure=_structure(tiny_models), identity=_identity(tiny_models))
    stylizer = _both_guides(tiny_config, tiny_models, style)
    result = stylizer.run([Photo(_photo(WARM, size=size), 1)], style="clay", strength=0.5)[0]
    assert result.image.size[0] >= 1 and result.image.size[1] >= 1


_BOTH: dict[str, Stylizer] = {}


def _both_guides(tiny_config, tiny_models, style) -> Stylizer:
    if "s" not in _BOTH:
        _BOTH["s"] = Stylizer(_settings(tiny_config, clay=style))
    return _BOTH["s"]


# -- config and models --------------------------------------------------------------------------------------------


def test_a_controlnet_that_is_not_one_is_named_by_its_key(tiny_config, tiny_models):
    wrong = _structure(tiny_models).model_copy(update={"controlnet": str(tiny_models.depth_folder)})
    with pytest.raises(ModelError, match=r"styles\.clay\.structure\.controlnet"):
        Stylizer(_settings(tiny_config, clay=_clay(tiny_config, structure=wrong)))


def test_an_adapter_that_is_not_one_is_named_by_its_key(tiny_config, tiny_models):
    wrong = _identity(tiny_models).model_copy(update={"adapter": str(tiny_models.lora_kohya)})
    with pytest.raises(ModelError, match=r"styles\.clay\.identity\.adapter"):
        Stylizer(_settings(tiny_config, clay=_clay(tiny_config, identity=wrong)))


def test_a_face_detector_of_another_shape_is_named_by_its_key(tiny_config, tiny_models):
    tagger = str(tiny_models.tagger_folder / "model.onnx")  # an ONNX model, but not a face detector
    wrong = _identity(tiny_models).model_copy(update={"face_detector": tagger})
    with pytest.raises(ModelError, match=r"styles\.clay\.identity\.face_detector: .*not an UltraFace"):
        Stylizer(_settings(tiny_config, clay=_clay(tiny_config, identity=wrong)))


def test_a_depth_model_that_is_not_one_is_named_by_its_key(tiny_config, tiny_models):
    wrong = _structure(tiny_models).model_copy(update={"depth_model": str(tiny_models.controlnet_folder)})
    with pytest.raises(ModelError, match=r"styles\.clay\.structure\.depth_model"):
        Stylizer(_settings(tiny_config, clay=_clay(tiny_config, structure=wrong)))


def test_guide_settings_are_checked_with_the_key_named(tmp_path):
    def load(extra: str):
        path = tmp_path / "config.toml"
        path.write_text("[styles.clay]\n" + extra, encoding="utf-8")
        return load_config(path, check_models=False)

    with pytest.raises(ConfigError, match=r"styles\.clay\.structure\.end: must be above start"):
        load("[styles.clay.structure]\nstart = 0.6\nend = 0.4\n")
    with pytest.raises(ConfigError, match=r"styles\.clay\.structure\.kind"):
        load("[styles.clay.structure]\nkind = \"normal\"\n")
    with pytest.raises(ConfigError, match=r"styles\.clay\.identity\.scale"):
        load("[styles.clay.identity]\nscale = -1.0\n")
    with pytest.raises(ConfigError, match="fuse_qkv"):
        load('[styles.clay.identity]\nadapter = "a/b:x.safetensors"\n[pipeline]\nfuse_qkv = true\n')
    assert not load("").styles["clay"].structure.enabled  # off by default


def _uncommented_faithful(text: str) -> str:
    lines, out, inside = text.splitlines(), [], False
    for line in lines:
        if line.startswith("# [styles.clay-faithful"):
            inside = True
        if inside and line.startswith("# "):
            line = line[2:]
        elif inside and not line.startswith("#"):
            inside = False
        out.append(line)
    return "\n".join(out) + "\n"


def test_the_shipped_clay_faithful_style_is_valid_once_uncommented(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(_uncommented_faithful(ROOT_CONFIG.read_text(encoding="utf-8")), encoding="utf-8")
    config = load_config(path, check_models=False)
    faithful = config.styles["clay-faithful"]
    assert faithful.structure.enabled and faithful.structure.kind == "depth" and faithful.structure.scale == 0.8
    assert faithful.identity.enabled and faithful.default_strength == 0.65
    assert "clay-faithful" not in load_config(ROOT_CONFIG, check_models=False).styles  # shipped off


def _claybot(*args, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(CLAYBOT), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)


@pytest.fixture(scope="module")
def faithful_config(tiny_models, tmp_path_factory) -> Path:
    """The repository config with clay-faithful uncommented, its models pointed at the tiny ones."""
    template = _uncommented_faithful(ROOT_CONFIG.read_text(encoding="utf-8"))
    path = tmp_path_factory.mktemp("faithful") / "config.toml"
    path.write_text(tiny_config_text(template, tiny_models), encoding="utf-8")
    return path


@pytest.mark.parametrize("key", ["structure.controlnet", "identity.adapter", "identity.image_encoder"])
def test_check_names_a_missing_guide_model_by_its_config_key(faithful_config, tmp_path, key):
    doc = tomlkit.parse(faithful_config.read_text(encoding="utf-8"))
    table, name = key.split(".")
    doc["styles"]["clay-faithful"][table][name] = str(tmp_path / "nowhere" / "model")
    path = tmp_path / "config.toml"
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    run = _claybot("check", "--config", path)
    assert run.returncode != 0
    assert f"styles.clay-faithful.{key}" in run.stderr
    assert "Traceback" not in run.stderr


def test_check_loads_the_faithful_style_and_lists_its_guide_models(faithful_config):
    run = _claybot("check", "--config", faithful_config)
    assert run.returncode == 0, run.stderr
    assert "styles.clay-faithful.structure.controlnet" in run.stdout
    assert "styles.clay-faithful.identity.adapter" in run.stdout
    assert "every model loads" in run.stdout


def test_sweep_rows_are_the_guide_scales_and_scale_zero_is_the_unguided_picture(faithful_config, tmp_path):
    from pipeline.core.sheet import cell_box

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(photo_bytes((128, 96), WARM))
    sheet_path = tmp_path / "sheet.png"
    run = _claybot("sweep", photo, "-o", sheet_path, "--style", "clay-faithful", "--guide", "structure",
                   "--guide-scales", "0,1", "--strengths", "0.5", "--seed", 3, "--config", faithful_config)
    assert run.returncode == 0, run.stderr
    assert "2 structure scales" in run.stdout
    sheet = Image.open(sheet_path).convert("RGB")
    single = tmp_path / "single.png"
    run = _claybot("stylize", photo, "-o", single, "--style", "clay-faithful", "--strength", 0.5, "--seed", 3,
                   "--config", faithful_config)
    assert run.returncode == 0, run.stderr
    cell = Image.open(single).size
    zero = _pixels(sheet.crop(cell_box(cell, 0, 0)))
    one = _pixels(sheet.crop(cell_box(cell, 0, 1)))
    assert np.abs(zero - one).mean() > 1.0
    # the style's own scale (0.8) is neither row
    assert np.abs(_pixels(Image.open(single).convert("RGB")) - one).mean() > 0.1


def test_sweep_of_a_guide_the_style_lacks_says_which_key_to_set(faithful_config, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(photo_bytes((128, 96)))
    run = _claybot("sweep", photo, "-o", tmp_path / "s.png", "--style", "clay", "--guide", "identity",
                   "--config", faithful_config)
    assert run.returncode != 0
    assert "styles.clay.identity.adapter" in run.stderr


async def test_a_sweeps_guide_scales_reach_the_worker_through_either_queue(tiny_config):
    """Intake → (local) a codec frame, and → Redis stream fields → (Redis) a job entry: the same settled job."""
    from pipeline.core import codec
    from pipeline.core.intake import take_in
    from pipeline.core.jobs import Batch, Task
    from pipeline.core.redis_entries import job_fields, parse_job

    job = await take_in(tiny_config.gpu(), photo_bytes(), seed=1, options={"structure_scale": 0.25})
    [local] = codec.decode(codec.encode(Batch((Task("a", job),), 9.0))).tasks
    style = tiny_config.styles["clay"]
    local_spec = local.job.spec
    assert (local_spec.structure_scale, local_spec.identity_scale) == (0.25, style.identity.scale)  # unset: the style's
    fields = job_fields("a", "o", job, 9.0, 0.0)  # as redis_queue writes them
    remote = parse_job("1-0", fields, tiny_config.gpu()).job
    assert (remote.spec.structure_scale, remote.spec.identity_scale) == (0.25, style.identity.scale)
    assert remote == dataclasses.replace(local.job, image=b"")  # the photo travels apart


def test_the_structure_guide_samples_with_the_speed_presets_scheduler(tiny_config, tiny_models):
    # A speed preset sets its sampler on the base pipeline per call; the ControlNet pipeline built from it must
    # sample with that one too, for the preset's steps (the tiny config's [speed.fast]: Euler trailing, 4 steps).
    stylizer = Stylizer(_settings(tiny_config, clay=_clay(tiny_config, structure=_structure(tiny_models))))
    control_pipe = stylizer.guides._control_pipe("clay")
    used: list[tuple[str, int]] = []

    def on_step(step: int, total: int) -> None:
        used.append((type(control_pipe.scheduler).__name__, total))

    photo = Photo(_photo(), 7)
    [fast] = stylizer.run([photo], style="clay", strength=0.5, speed="fast", on_step=on_step)
    assert used and set(used) == {("EulerDiscreteScheduler", 4)}
    assert control_pipe.scheduler.config.timestep_spacing == "trailing"
    used.clear()
    [best] = stylizer.run([photo], style="clay", strength=0.5, speed="default", on_step=on_step)
    base = type(stylizer.speed.scheduler("default")).__name__
    assert set(used) == {(base, tiny_config.pipeline.steps // 2)}
    assert np.abs(_pixels(fast.image) - _pixels(best.image)).mean() > 1.0


def test_each_style_finds_faces_its_own_way(tiny_config, tiny_models):
    # one adapter for the worker, but a detector (or none) per style
    detecting = _clay(tiny_config, identity=_identity(tiny_models))
    whole = _clay(tiny_config, identity=_identity(tiny_models, detector=False))
    stylizer = Stylizer(_settings(tiny_config, detecting=detecting, whole=whole))
    blue = _photo(BLUE)
    assert stylizer.guides.faces("detecting", [blue]) == [None]
    assert stylizer.guides.faces("whole", [blue]) == [blue]


def test_tiny_models_writes_the_guide_models_in_their_real_formats(tmp_path):
    import json

    import onnx

    run = _claybot("tiny-models", tmp_path / "tiny")
    assert run.returncode == 0, run.stderr
    [line] = [line for line in run.stdout.splitlines() if line.startswith("guide models")]
    paths = dict(part.strip().split(" ", 1) for part in line.split("):", 1)[1].split(","))
    assert set(paths) == {"controlnet", "depth_model", "adapter", "image_encoder", "face_detector"}
    controlnet = json.loads((Path(paths["controlnet"]) / "config.json").read_text())
    assert controlnet["_class_name"] == "ControlNetModel"
    assert (Path(paths["controlnet"]) / "diffusion_pytorch_model.safetensors").is_file()
    depth = json.loads((Path(paths["depth_model"]) / "config.json").read_text())
    assert depth["model_type"] == "depth_anything"
    assert (Path(paths["depth_model"]) / "preprocessor_config.json").is_file()
    encoder = json.loads((Path(paths["image_encoder"]) / "config.json").read_text())
    assert encoder["architectures"] == ["CLIPVisionModelWithProjection"]
    from safetensors import safe_open

    with safe_open(paths["adapter"], "pt") as f:
        keys = set(f.keys())
    assert "image_proj.latents" in keys and "ip_adapter.1.to_k_ip.weight" in keys  # h94's original layout
    detector = onnx.load(paths["face_detector"])
    assert [o.name for o in detector.graph.output] == ["scores", "boxes"]
