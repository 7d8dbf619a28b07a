"""The ``claybot`` command line, run as real processes on tiny models (each process imports torch: ~5 s)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomlkit
from PIL import Image

from bot.cli import ROOT_CONFIG
from tests.conftest import photo_bytes

CLAYBOT = Path(sys.executable).parent / "claybot"
PHOTO_SIZE = (160, 120)


# One torch thread per process: on a small shared CPU, torch's spinning OpenMP threads slow a tiny img2img run
# 15-20x whenever another process competes for the cores (seen: warm-up 1.4 s alone, 20-30 s beside a test run).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def claybot(*args: str | Path, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLAYBOT), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=ENV, cwd=cwd)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """`claybot tiny-models DIR`, run once for the module, with DIR relative as `make demo` gives it."""
    assert CLAYBOT.is_file(), f"{CLAYBOT} missing: pip install -e . in the venv"
    directory = tmp_path_factory.mktemp("cli") / "tiny"
    run = claybot("tiny-models", directory.name, cwd=directory.parent)
    assert run.returncode == 0, run.stderr
    assert f"wrote tiny models and {directory / 'config.toml'}" in run.stdout
    return directory


@pytest.fixture(scope="module")
def config_path(tiny_dir) -> Path:
    return tiny_dir / "config.toml"


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    path.write_bytes(photo_bytes(PHOTO_SIZE))
    return path


@pytest.fixture(scope="module")
def stylized(tiny_dir, config_path, photo) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """The photo stylized three times: seed 1 twice, seed 2 once."""
    runs = {}
    for name, seed in [("first", 1), ("again", 1), ("other", 2)]:
        out = tiny_dir.parent / f"{name}.png"
        runs[name] = (claybot("stylize", photo, "-o", out, "--config", config_path, "--seed", seed), out)
    return runs


def _variant(config_path: Path, tmp_path: Path, change) -> Path:
    """A copy of the tiny config with one change made by `change(doc)`."""
    doc = tomlkit.parse(config_path.read_text(encoding="utf-8"))
    change(doc)
    path = tmp_path / "config.toml"
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path


def test_tiny_models_writes_models_and_a_config_that_keeps_the_repository_styles_and_comments(tiny_dir, config_path):
    for name in ("sdxl", "sdxl.safetensors", "clay_lora_kohya.safetensors", "wd14/model.onnx",
                 "wd14/selected_tags.csv"):
        assert (tiny_dir / name).exists(), name
    root_text = ROOT_CONFIG.read_text(encoding="utf-8")
    tiny_text = config_path.read_text(encoding="utf-8")
    root, tiny = tomllib.loads(root_text), tomllib.loads(tiny_text)

    assert set(tiny["styles"]) == set(root["styles"])
    for name, style in root["styles"].items():
        for key in ("trigger_words", "trigger_weight", "default_strength", "negative_prompt", "clashing_tags",
                    "lora_scale"):
            assert tiny["styles"][name].get(key) == style.get(key), f"styles.{name}.{key}"
    assert tiny["styles"]["clay"]["trigger_words"] == "Clay Animation, Clay"
    assert tiny["styles"]["clay"]["lora"] == str(tiny_dir / "clay_lora_kohya.safetensors")
    assert tiny["tagger"]["model"] == str(tiny_dir / "wd14")
    assert tiny["pipeline"]["default_style"] == root["pipeline"]["default_style"]

    comments = [line.strip() for line in root_text.splitlines() if line.strip().startswith("#")]
    assert len(comments) > 20
    missing = [c for c in comments if c not in tiny_text]
    assert not missing, f"comments lost: {missing[:3]}"


def test_stylize_writes_a_png_of_the_photo_aspect_ratio_and_reports_tags_prompt_seed_timings(stylized):
    run, out = stylized["first"]
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr

    image = Image.open(io.BytesIO(out.read_bytes()))
    assert image.format == "PNG"
    assert image.width / image.height == pytest.approx(PHOTO_SIZE[0] / PHOTO_SIZE[1], rel=0.02)

    lines = run.stdout.splitlines()

    def line(prefix: str) -> str:
        found = [ln for ln in lines if ln.startswith(prefix)]
        assert found, f"no line starting {prefix!r} in:\n{run.stdout}"
        return found[0]

    tags = line("tags:").removeprefix("tags:").strip()
    assert tags and tags != "(none)"
    prompt = line("prompt:")
    assert "(Clay Animation, Clay:2)" in prompt
    assert line("seed:").rstrip() == "seed:     1"
    timings = line("timings:")
    for stage in ("decode", "tag", "prompt", "denoise", "encode"):
        assert f" {stage} " in timings, f"{stage} missing from {timings!r}"


def test_stylize_with_the_same_seed_is_byte_identical_and_another_seed_differs(stylized):
    for name in ("first", "again", "other"):
        assert stylized[name][0].returncode == 0, stylized[name][0].stderr
    first, again, other = (stylized[name][1].read_bytes() for name in ("first", "again", "other"))
    assert first == again
    assert first != other
    assert "seed:     2" in stylized["other"][0].stdout


def test_animate_writes_an_h264_mp4_of_the_asked_length_without_sound(config_path, photo, tmp_path):
    import av

    out = tmp_path / "clips" / "clip.mp4"
    run = claybot("animate", photo, "-o", out, "--config", config_path, "--seconds", "2", "--seed", "5")
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        assert stream.codec_context.name == "h264" and float(stream.average_rate) == 8.0
        assert not container.streams.audio  # no sound: Telegram loops it like a GIF
    assert len(frames) == 17  # 2 s at the tiny config's 8 fps, as the model makes them (8k + 1)
    assert frames[0].shape[1] / frames[0].shape[0] == pytest.approx(PHOTO_SIZE[0] / PHOTO_SIZE[1], rel=0.05)
    assert "seed:     5" in run.stdout and f"wrote {out}" in run.stdout and "17 frames at 8 fps" in run.stdout


def test_animate_with_clips_off_says_how_to_switch_them_on_and_writes_nothing(config_path, photo, tmp_path):
    config = _variant(config_path, tmp_path, lambda doc: doc["animate"].update({"enabled": False}))
    run = claybot("animate", photo, "-o", tmp_path / "clip.mp4", "--config", config)
    assert run.returncode == 2
    assert "[animate] enabled = true" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "clip.mp4").exists()


def test_stylize_refuses_a_strength_above_1_before_doing_anything(photo, tmp_path):
    run = claybot("stylize", photo, "-o", tmp_path / "out.png", "--strength", "1.5")
    assert run.returncode == 2
    assert "between 0.05 and 1" in run.stderr
    assert "--strength" in run.stderr
    assert not (tmp_path / "out.png").exists()


def test_stylize_of_a_file_that_is_not_an_image_fails_with_a_message_and_no_traceback(config_path, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("these are my holiday notes, not a photo\n", encoding="utf-8")
    run = claybot("stylize", text, "-o", tmp_path / "out.png", "--config", config_path, "--seed", "1")
    assert run.returncode != 0
    assert "not an image" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out.png").exists()


def test_tiny_models_into_a_file_fails_with_a_message_and_no_traceback(tmp_path):
    target = tmp_path / "taken"
    target.write_text("not a folder\n", encoding="utf-8")
    run = claybot("tiny-models", target)
    assert run.returncode == 1
    assert f"{target}: cannot write the tiny models there" in run.stderr and "Traceback" not in run.stderr
    assert target.read_text(encoding="utf-8") == "not a folder\n"


def test_tiny_models_expands_a_quoted_tilde_to_the_home_folder(tmp_path):
    run = subprocess.run([str(CLAYBOT), "tiny-models", "~/models"], capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL, env={**ENV, "HOME": str(tmp_path)}, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "models" / "config.toml").is_file() and not (tmp_path / "~").exists()


def test_check_loads_every_model_of_the_tiny_config(config_path):
    run = claybot("check", "--config", config_path)
    assert run.returncode == 0, run.stderr
    assert "every model loads" in run.stdout
    assert "styles.clay.lora" in run.stdout  # it lists what it loads


def test_check_names_the_key_of_a_model_path_that_does_not_exist(config_path, tmp_path):
    missing = tmp_path / "nowhere" / "clay.safetensors"
    path = _variant(config_path, tmp_path, lambda doc: doc["styles"]["clay"].__setitem__("lora", str(missing)))
    run = claybot("check", "--config", path)
    assert run.returncode != 0
    assert "styles.clay.lora" in run.stderr
    assert "every model loads" not in run.stdout
    assert "Traceback" not in run.stderr


def test_check_names_the_key_of_a_lora_file_that_is_not_a_lora(config_path, tmp_path):
    garbage = tmp_path / "x.safetensors"
    garbage.write_bytes(b"not a lora")
    path = _variant(config_path, tmp_path, lambda doc: doc["styles"]["clay"].__setitem__("lora", str(garbage)))
    run = claybot("check", "--config", path)
    assert run.returncode != 0
    assert "styles.clay.lora" in run.stderr
    assert "every model loads" not in run.stdout
    assert "Traceback" not in run.stderr


def test_check_refuses_an_unknown_key_with_exit_status_2_naming_it(config_path, tmp_path):
    path = _variant(config_path, tmp_path, lambda doc: doc["pipeline"].__setitem__("colour_boost", 3))
    run = claybot("check", "--config", path)
    assert run.returncode == 2
    assert "pipeline.colour_boost" in run.stderr
    assert "Traceback" not in run.stderr


def test_run_without_any_token_says_which_variables_to_set(tiny_config_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAYBOT_")}
    out = subprocess.run([str(CLAYBOT), "run", "--config", str(tiny_config_path)], capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 2
    assert "CLAYBOT_TELEGRAM_TOKEN" in out.stderr and "CLAYBOT_DISCORD_TOKEN" in out.stderr
    assert "Traceback" not in out.stderr


def test_run_with_one_token_starts_that_front_end_alone(tiny_config, monkeypatch, caplog):
    from bot.cli import _front_end_tokens

    monkeypatch.delenv("CLAYBOT_DISCORD_TOKEN", raising=False)
    monkeypatch.setenv("CLAYBOT_TELEGRAM_TOKEN", "123:abc")
    with caplog.at_level("WARNING"):
        assert _front_end_tokens(tiny_config) == {"telegram": "123:abc"}
    assert "discord is not started: the environment variable CLAYBOT_DISCORD_TOKEN is empty" in caplog.text
    assert "123:abc" not in caplog.text


def test_stylize_and_sweep_with_the_edit_style_go_through_flux2_klein_the_same_seed_the_same_bytes(
        tiny_dir, config_path, tmp_path):
    """`claybot stylize --style likeness` in its own process, and the same photo, seed and words through the worker
    loop in this one (its FLUX.2 klein engine on the same tiny model): byte for byte the same picture."""
    import asyncio

    from bot.config import load_config
    from pipeline.core.intake import take_in
    from pipeline.core.jobs import Batch, Done, Task, Update
    from pipeline.core.kinds import worker_kinds
    from pipeline.gpu.worker import open_workshop, run_batch

    example = ROOT_CONFIG.parent / "examples" / "photo.jpg"
    out = tmp_path / "likeness.png"
    run = claybot("stylize", example, "-o", out, "--config", config_path, "--seed", 1, "--style", "likeness",
                  "--words", "as a knight in armour")
    assert run.returncode == 0, run.stderr
    assert "style:    likeness, by instruction" in run.stdout
    prompt = next(line for line in run.stdout.splitlines() if line.startswith("prompt:"))
    tags = next(line for line in run.stdout.splitlines() if line.startswith("tags:")).removeprefix("tags:").strip()
    assert prompt.removeprefix("prompt:").strip().startswith("Turn this photo into a claymation")
    assert tags in prompt and "as a knight in armour" in prompt  # the instruction holds the tags and the words

    config = load_config(config_path)
    gpu = config.gpu()
    job = asyncio.run(take_in(gpu, example.read_bytes(), style="likeness", seed=1,
                              options={"words": "as a knight in armour"}))
    sent: list = []
    # a worker of the likeness style alone (the tagger and the edit engine; no SDXL to load for this job)
    likeness = gpu.model_copy(update={"styles": {"likeness": gpu.styles["likeness"]}})
    run_batch(open_workshop(likeness, worker_kinds(likeness, [])), Batch((Task("cli-twin", job),), 60.0),
              sent.append)
    (done,) = [m.event for m in sent if isinstance(m, Update) and isinstance(m.event, Done)]
    assert done.image == out.read_bytes()

    sheet = tmp_path / "sheet.png"
    swept = claybot("sweep", example, "-o", sheet, "--config", config_path, "--style", "likeness", "--seed", 5,
                    "--strengths", "0.3,0.6", "--words", "in a snowy street")
    assert swept.returncode == 0, swept.stderr
    assert "style likeness (by instruction, no strength or trigger weight): 2 seeds from 5" in swept.stdout
    assert Image.open(sheet).width > 2 * done.width  # the photo and two pictures side by side
