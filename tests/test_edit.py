"""The edit engine (``engine = "edit"``: FLUX.2 [klein] by instruction) on the tiny klein model, in this process: the
real Flux2KleinPipeline, spied on; the licence gate; the memory line; lazy loading; words that reach the queue."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.cli import ROOT_CONFIG, tiny_config_text
from bot.config import ConfigError, load_config
from pipeline.core.errors import BadRequest, ModelError
from pipeline.core.guide_specs import model_specs
from pipeline.core.intake import take_in
from pipeline.core.jobs import Done, ErrorKind, Failed, Progress, Started, Task, Update
from pipeline.core.kinds import PictureSpec, kind_of
from pipeline.core.safety import OUTPUT_REFUSED
from pipeline.core.words import MAX_WORDS
from pipeline.gpu.engine import DecodedJob, Run, check_models
from pipeline.gpu.tiny_edit import write_tiny_edit_model

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "photo.jpg"


@pytest.fixture(scope="module")
def edit_folder(tmp_path_factory) -> Path:
    return write_tiny_edit_model(tmp_path_factory.mktemp("tiny-edit") / "edit")


@pytest.fixture(scope="module")
def config(tiny_models, edit_folder, tmp_path_factory):
    """The repository's config on the tiny models, its likeness style made by the tiny klein model."""
    path = tmp_path_factory.mktemp("edit-config") / "config.toml"
    path.write_text(tiny_config_text(ROOT_CONFIG.read_text(encoding="utf-8"), tiny_models, edit=edit_folder),
                    encoding="utf-8")
    return load_config(path)


@pytest.fixture(scope="module")
def engine(config):
    from pipeline.gpu.edit import EditEngine
    from pipeline.gpu.stylizer import load_tagger, pick_device

    gpu = config.gpu()
    return EditEngine(gpu, load_tagger(gpu, pick_device("cpu")))


class Calls:
    """What the edit pipeline was called with."""

    def __init__(self) -> None:
        self.calls: list[dict] = []


@pytest.fixture
def spy(monkeypatch) -> Calls:
    from diffusers import Flux2KleinPipeline

    calls = Calls()
    real = Flux2KleinPipeline.__call__

    def spying(pipe, *args, **kwargs):
        calls.calls.append(kwargs)
        return real(pipe, *args, **kwargs)

    monkeypatch.setattr(Flux2KleinPipeline, "__call__", spying)
    return calls


def decoded_job(config, engine, *, words: str | None = None, seed: int = 1, max_rating: str | None = None,
                data: bytes | None = None) -> DecodedJob:
    """The example photo taken in for the likeness style as the flow takes it in, decoded and tagged as the worker
    does before it hands the job to an engine."""
    data = data if data is not None else EXAMPLE.read_bytes()
    job = asyncio.run(take_in(config.gpu(), data, style="likeness", seed=seed, max_rating=max_rating,
                              options={"words": words}))
    image = Image.open(io.BytesIO(data)).convert("RGB")
    decoded = DecodedJob(Task("job-1", job), image)
    decoded.tags = engine.tagger([image])[0]
    return decoded


def run_one(engine, job: DecodedJob, *, tagger=None) -> list:
    sent: list = []
    run = Run(sent.append, 60.0, float("inf"), tagger if tagger is not None else engine.tagger)
    engine.run([job], run)
    return [message.event for message in sent if isinstance(message, Update)]


def test_the_edit_pipeline_gets_the_photo_as_its_reference_and_an_instruction_with_tags_and_words(
        config, engine, spy):
    job = decoded_job(config, engine, words="as a knight in armour")
    events = run_one(engine, job)

    assert isinstance(events[0], Started)
    steps = [event for event in events if isinstance(event, Progress)]
    assert [(p.step, p.total) for p in steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]  # the style's 4 distilled steps
    done = events[-1]
    assert isinstance(done, Done), events
    (call,) = spy.calls
    reference = call["image"]
    photo = job.image.resize(reference.size, Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(reference), np.asarray(photo))  # the photo itself, at the edit's size
    assert reference.width / reference.height == pytest.approx(job.image.width / job.image.height, rel=0.15)
    tags = done.tags
    assert tags and all(tag in call["prompt"] for tag in tags)
    assert "as a knight in armour" in call["prompt"] and call["prompt"].startswith("Turn this photo into a claymation")
    assert call["num_inference_steps"] == 4 and call["text_encoder_out_layers"] == (1, 2, 3)
    assert done.prompt == call["prompt"] and done.words == "as a knight in armour"
    assert done.strength == 0.0 and done.style == "likeness"  # no strength: the engine keeps the photo by design
    image = Image.open(io.BytesIO(done.image))
    assert image.format == "PNG" and (image.width, image.height) == (done.width, done.height)
    assert image.width / image.height == pytest.approx(job.image.width / job.image.height, rel=0.02)


def test_the_same_seed_gives_the_same_bytes_and_words_and_seeds_change_the_picture(config, engine):
    def picture(**options) -> bytes:
        events = run_one(engine, decoded_job(config, engine, **options))
        (done,) = [event for event in events if isinstance(event, Done)]
        return done.image

    first = picture(seed=7, words="in a snowy street")
    assert picture(seed=7, words="in a snowy street") == first
    assert picture(seed=8, words="in a snowy street") != first
    assert picture(seed=7, words="on a sunny beach") != first


def test_a_result_over_the_chats_rating_is_not_sent(config, engine):
    class Explicit:
        """A tagger that finds every picture explicit."""

        def __call__(self, images):
            from pipeline.gpu.tagger import Tags

            return [Tags(general=[], characters=[], ratings={"explicit": 0.99, "general": 0.01}) for _ in images]

    events = run_one(engine, decoded_job(config, engine, max_rating="general"), tagger=Explicit())
    assert events[-1] == Failed(OUTPUT_REFUSED, ErrorKind.NOT_ALLOWED)


def test_the_model_loads_on_its_first_job_and_once(config, tiny_models, edit_folder, caplog):
    from pipeline.gpu.edit import EditEngine
    from pipeline.gpu.stylizer import load_tagger, pick_device

    gpu = config.gpu()
    fresh = EditEngine(gpu, load_tagger(gpu, pick_device("cpu")))
    assert fresh._pipes == {}  # built at start: resolved, nothing loaded
    caplog.set_level(logging.INFO, logger="pipeline.gpu.edit")
    for seed in (1, 2):
        assert isinstance(run_one(fresh, decoded_job(config, fresh, seed=seed))[-1], Done)
    assert len(fresh._pipes) == 1
    assert caplog.text.count("on its first job") == 1


def test_a_strength_or_speed_for_the_edit_style_is_refused_and_words_are_bounded(config):
    gpu = config.gpu()
    with pytest.raises(BadRequest, match="The likeness style works by instruction and has no strength"):
        asyncio.run(take_in(gpu, EXAMPLE.read_bytes(), style="likeness", options={"strength": 0.6}))
    with pytest.raises(BadRequest, match="has no speed"):
        asyncio.run(take_in(gpu, EXAMPLE.read_bytes(), style="likeness", options={"speed": "fast"}))
    with pytest.raises(BadRequest, match=f"at most {MAX_WORDS}"):
        asyncio.run(take_in(gpu, EXAMPLE.read_bytes(), style="likeness", options={"words": "a" * (MAX_WORDS + 1)}))
    with pytest.raises(BadRequest, match="control character"):
        asyncio.run(take_in(gpu, EXAMPLE.read_bytes(), options={"words": "as a\x1b[31m knight"}))
    job = asyncio.run(take_in(gpu, EXAMPLE.read_bytes(), style="likeness", options={"words": "  as a\n knight "}))
    assert isinstance(job.spec, PictureSpec) and job.spec.words == "as a knight"
    assert kind_of("picture").max_batch(gpu, job) == 1  # each edit call reads one photo as its reference
    with pytest.raises(BadRequest):  # a forged job (the codec and Redis read specs through this check too)
        PictureSpec(strength=0.5, speed="default", trigger_weight=2, structure_scale=0, identity_scale=0,
                    words="a\x00b")


def licensed(tmp_path: Path, licence: str, name: str = "") -> Path:
    return write_tiny_edit_model(tmp_path / f"edit-{licence}", licence=licence, licence_name=name)


def with_edit_model(config, folder: Path, *, commercial: bool):
    gpu = config.gpu()
    styles = dict(gpu.styles)
    styles["likeness"] = styles["likeness"].model_copy(update={
        "edit": styles["likeness"].edit.model_copy(update={"model": str(folder)})})
    return gpu.model_copy(update={"styles": styles, "models": gpu.models.model_copy(update={"commercial": commercial})})


def test_the_licence_gate_refuses_a_non_commercial_edit_model_at_start_and_passes_apache(config, tmp_path, caplog):
    from pipeline.gpu.stylizer import pick_device

    cpu = pick_device("cpu")
    non_commercial = licensed(tmp_path, "other", "flux-non-commercial-license")
    with pytest.raises(ModelError, match=r"styles\.likeness\.edit\.model: .*flux-non-commercial-license"):
        check_models(with_edit_model(config, non_commercial, commercial=True), {"sdxl", "edit"}, cpu)
    check_models(with_edit_model(config, non_commercial, commercial=False), {"sdxl", "edit"}, cpu)  # not charging
    caplog.set_level(logging.INFO)
    check_models(with_edit_model(config, licensed(tmp_path, "apache-2.0"), commercial=True), {"sdxl", "edit"}, cpu)
    assert "styles.likeness.edit.model" not in caplog.text  # apache-2.0: nothing to say
    assert "edit ≈ " in caplog.text and "sdxl ≈ " in caplog.text  # the memory line names both engines
    # the tiny SDXL folder has no model card: a commercial claybot is warned, not stopped
    assert "pipeline.base_model" in caplog.text and "no licence" in caplog.text


def test_a_worker_with_a_non_commercial_edit_model_stops_at_start_with_one_line(config, tmp_path):
    from pipeline.core.kinds import worker_kinds
    from pipeline.gpu.worker import open_workshop

    settings = with_edit_model(config, licensed(tmp_path, "cc-by-nc-4.0"), commercial=True)
    with pytest.raises(ModelError, match="commercial") as refused:
        open_workshop(settings, worker_kinds(settings, []))
    assert "\n" not in str(refused.value)


def test_an_auto_style_is_off_until_its_model_is_on_this_machine(tiny_models, edit_folder, tmp_path):
    template = ROOT_CONFIG.read_text(encoding="utf-8")
    path = tmp_path / "config.toml"
    path.write_text(tiny_config_text(template, tiny_models, edit=edit_folder).replace(
        str(edit_folder), str(tmp_path / "not-fetched")), encoding="utf-8")
    assert "likeness" not in load_config(path).styles  # a folder that is not there: off, no error
    path.write_text(path.read_text(encoding="utf-8").replace('enabled = "auto"', "enabled = true"),
                    encoding="utf-8")
    with pytest.raises(ConfigError, match=r"styles\.likeness\.edit\.model: no file or folder at"):
        load_config(path)  # turned on, its model must be there
    shipped = load_config(ROOT_CONFIG, check_models=False)
    assert "likeness" not in shipped.styles  # the repository's config: FLUX.2 klein is not in this cache


@pytest.mark.parametrize(("key", "value", "message"), [
    ("lora", "x.safetensors", r"styles\.likeness\.lora: the edit engine"),
    ("speed", "fast", r"styles\.likeness\.speed: the edit engine"),
])
def test_an_edit_style_with_what_only_sdxl_uses_is_refused_naming_the_key(tiny_models, edit_folder, tmp_path, key,
                                                                        value, message):
    import tomlkit

    doc = tomlkit.parse(tiny_config_text(ROOT_CONFIG.read_text(encoding="utf-8"), tiny_models, edit=edit_folder))
    doc["styles"]["likeness"][key] = value
    path = tmp_path / "config.toml"
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(path, check_models=False)


def test_an_instruction_naming_an_unknown_field_is_refused_at_start(tiny_models, edit_folder, tmp_path):
    import tomlkit

    doc = tomlkit.parse(tiny_config_text(ROOT_CONFIG.read_text(encoding="utf-8"), tiny_models, edit=edit_folder))
    doc["styles"]["likeness"]["edit"]["instruction"] = "Make it clay. {tags} {name}"
    path = tmp_path / "config.toml"
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"styles\.likeness\.edit\.instruction: names \{name\}"):
        load_config(path, check_models=False)


def test_words_travel_with_the_job_and_jobs_written_before_words_still_read(config):
    from pipeline.core import codec
    from pipeline.core.jobs import Job

    job = asyncio.run(take_in(config.gpu(), EXAMPLE.read_bytes(), style="likeness", options={"words": "as a knight"}))
    assert codec.decode(codec.encode(job)) == job
    fields, blobs = codec.text_fields(job)
    spec = json.loads(fields["spec"])
    assert spec.pop("words") == "as a knight"
    older = codec.from_fields({**fields, "spec": json.dumps(spec)}, blobs, expect=(Job,))
    assert isinstance(older.spec, PictureSpec) and older.spec.words == ""  # a Redis entry or journal row of before


def test_help_tells_of_the_words_and_the_edit_style(config):
    from bot.telegram.help import help_text

    text = help_text(config, "claybot_bot")
    assert "/clay 0.6 as a knight in armour" in text and f"up to {MAX_WORDS} characters" in text
    assert "/clay likeness as a knight: clay by instruction" in text
    assert "styles.likeness.edit.model" in config.model_specs()  # `claybot models` fetches it once it is on


def test_an_edit_model_that_cannot_load_is_named_by_its_key_when_checked_and_fails_only_its_job(config, engine,
                                                                                              tmp_path):
    import shutil

    from pipeline.core.jobs import ErrorKind, Failed
    from pipeline.gpu.edit import LOAD_REASON, EditEngine

    broken = tmp_path / "broken"
    shutil.copytree(config.styles["likeness"].edit.model, broken)
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    gpu = with_edit_model(config, broken, commercial=False)
    failing = EditEngine(gpu, None)  # the worker starts: nothing is loaded yet
    with pytest.raises(ModelError, match=r"styles\.likeness\.edit\.model: cannot load .* as a FLUX\.2 \[klein\]"):
        failing.load_all()  # `claybot check`
    events = run_one(failing, decoded_job(config, engine), tagger=engine.tagger)
    assert events == [Started(1), Failed(LOAD_REASON.format(style="likeness"), ErrorKind.INTERNAL)]  # that job alone


@pytest.fixture(scope="module")
def single_file(edit_folder, tmp_path_factory) -> Path:
    from pipeline.gpu.tiny_edit import write_tiny_edit_single_file

    return write_tiny_edit_single_file(edit_folder, tmp_path_factory.mktemp("bfl") / "flux-2-klein-tiny.safetensors")


def picture_with(config, gpu, engine) -> np.ndarray:
    """One likeness picture of the example photo (seed 3, words) by a fresh EditEngine on ``gpu``, as pixels."""
    from pipeline.gpu.edit import EditEngine

    fresh = EditEngine(gpu, engine.tagger)
    (done,) = [e for e in run_one(fresh, decoded_job(config, engine, seed=3, words="as a knight")) if
               isinstance(e, Done)]
    return np.asarray(Image.open(io.BytesIO(done.image)), dtype=np.int16)


def same_picture(a: np.ndarray, b: np.ndarray) -> bool:
    """The same weights loaded two ways: diffusers splits BFL's fused QKV into views, whose matmuls round the last
    float bit differently (seen: 1e-6), so a pixel may differ by one level, never more."""
    return a.shape == b.shape and int(np.abs(a - b).max()) <= 1


def test_a_single_file_edit_model_in_bfls_layout_loads_beside_its_config_and_makes_the_same_picture(
        config, engine, edit_folder, single_file):
    gpu = config.gpu()
    likeness = gpu.styles["likeness"]
    single = gpu.model_copy(update={"styles": {**gpu.styles, "likeness": likeness.model_copy(update={
        "edit": likeness.edit.model_copy(update={"model": str(single_file), "config": str(edit_folder)})})}})
    assert "styles.likeness.edit.config" in model_specs(single)  # `claybot models` fetches the rest too
    assert same_picture(picture_with(config, single, engine), picture_with(config, gpu, engine))


def test_a_single_file_edit_model_by_url_and_sha256_is_fetched_checked_and_loads(config, engine, edit_folder,
                                                                                 single_file, tmp_path):
    import functools
    import hashlib
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(single_file.parent))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        from pipeline.core.settings import UrlModel

        digest = hashlib.sha256(single_file.read_bytes()).hexdigest()
        url = UrlModel(url=f"http://127.0.0.1:{server.server_port}/{single_file.name}", sha256=digest)
        gpu = config.gpu()
        likeness = gpu.styles["likeness"]
        pipeline = gpu.pipeline.model_copy(update={"cache_dir": str(tmp_path / "cache")})
        by_url = gpu.model_copy(update={"pipeline": pipeline, "styles": {**gpu.styles, "likeness": likeness.model_copy(
            update={"edit": likeness.edit.model_copy(update={"model": url, "config": str(edit_folder)})})}})
        assert same_picture(picture_with(config, by_url, engine), picture_with(config, gpu, engine))
        assert list((tmp_path / "cache" / "urls").glob("*flux-2-klein-tiny.safetensors"))  # kept, checked
        wrong = by_url.model_copy(update={"styles": {**by_url.styles, "likeness": by_url.styles["likeness"].model_copy(
            update={"edit": by_url.styles["likeness"].edit.model_copy(update={"model": UrlModel(
                url=url.url.replace(".safetensors", "-2.safetensors"), sha256="0" * 64)})})}})
        from pipeline.gpu.edit import EditEngine

        with pytest.raises(ModelError, match=r"styles\.likeness\.edit\.model"):
            EditEngine(wrong, None)  # a file that is not there: named by its key at start
    finally:
        server.shutdown()


def test_while_its_model_loads_a_job_keeps_saying_it_has_started(config, engine, monkeypatch):
    import time as _time

    from pipeline.gpu import edit
    from pipeline.gpu.edit import EditEngine

    fresh = EditEngine(config.gpu(), engine.tagger)
    slow_load = fresh._pipe

    def slow(model):
        _time.sleep(0.35)  # a 15 GB model from a slow disk, in miniature
        return slow_load(model)

    monkeypatch.setattr(fresh, "_pipe", slow)
    monkeypatch.setattr(edit, "BEAT_S", 0.1)
    events = run_one(fresh, decoded_job(config, engine))
    before = events[:next(i for i, e in enumerate(events) if isinstance(e, Progress))]
    assert len(before) >= 3 and all(isinstance(e, Started) for e in before)  # at once, then every beat, then begun
    assert isinstance(events[-1], Done)
    events = run_one(fresh, decoded_job(config, engine, seed=2))  # loaded now: one Started, no waiting
    assert [type(e) for e in events[:2]] == [Started, Progress]


@pytest.mark.parametrize("size", [(800, 100), (100, 800), (24, 24)])
def test_a_thin_or_tiny_photo_gets_its_picture_in_its_own_shape(config, engine, size):
    # the tiny config's small pictures make the reference's short side 16–48 px, under what the pipeline accepts
    from tests.conftest import photo_bytes

    events = run_one(engine, decoded_job(config, engine, data=photo_bytes(size)))
    done = events[-1]
    assert isinstance(done, Done), events
    assert done.width / done.height == pytest.approx(size[0] / size[1], rel=0.1)


@pytest.mark.parametrize("words", ["as a 👩\u200d🚀 astronaut", "می\u200cخواهم", "in a ✈️ over Zürich"])
def test_words_in_emoji_and_scripts_that_need_joiners_are_taken_as_written(config, words):
    job = asyncio.run(take_in(config.gpu(), EXAMPLE.read_bytes(), style="likeness", options={"words": words}))
    assert job.spec.words == words


def test_words_that_look_like_the_instructions_fields_stay_literal_text():
    from pipeline.gpu.edit import instruction

    text = instruction("Clay it. The scene: {tags}. {words}", ["1girl"], "{tags} {0} {words.__class__}")
    assert text == "Clay it. The scene: 1girl. {tags} {0} {words.__class__}"
