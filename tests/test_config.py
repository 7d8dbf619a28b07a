"""config.toml is parsed into typed settings; every mistake names its key and what is allowed."""

from __future__ import annotations

import re
import tomllib

import pytest

from bot.cli import ROOT_CONFIG
from bot.config import ConfigError, load_config, parse_config, token
from pipeline.core import models


def _root() -> dict:
    return tomllib.loads(ROOT_CONFIG.read_text(encoding="utf-8"))


def _parse(tmp_path, raw: dict):
    return parse_config(raw, base_dir=tmp_path)


def _without_local_models(raw: dict, tiny_models) -> dict:
    raw["styles"]["clay"]["lora"] = str(tiny_models.lora_kohya)
    return raw


def test_root_config_is_valid_as_shipped_with_nothing_to_download_by_hand():
    # Every model of the shipped config is fetched from the Hugging Face Hub on first start: no local file needed.
    config = load_config(ROOT_CONFIG)
    assert config.styles["clay"].lora == "artificialguybr/ClayAnimationRedmond:ClayAnimationRedm.safetensors"
    assert all(models.parse(spec).kind == "repo" for spec in config.model_specs().values())
    assert config.pipeline.civitai_token_env == "CIVITAI_TOKEN"


def test_root_config_values_match_the_original_workflow(tiny_models, tmp_path):
    config = _parse(tmp_path, _without_local_models(_root(), tiny_models))
    clay = config.styles["clay"]
    assert config.pipeline.default_style == "clay"
    assert clay.trigger_words == "Clay Animation, Clay"  # ClayAnimation.Redmond's trigger, from its model card
    assert clay.trigger_weight == 2
    assert clay.default_strength == 0.5
    assert "realistic" in clay.clashing_tags
    assert config.telegram.token_env and config.discord.token_env


def test_root_config_ships_the_original_claymate_lines_ready_to_uncomment(tmp_path):
    text = ROOT_CONFIG.read_text(encoding="utf-8")
    block = text[text.index("[styles.clay]"):text.index("[bot]")]
    block = block[block.index("# The original workflow's LoRA instead"):]  # later examples: presets, guides
    commented = [line[2:] for line in block.splitlines() if re.match(r"# \w+ = ", line)][:3]
    assert commented == ['lora = "models/CLAYMATE_V2.03_.safetensors"', 'trigger_words = "claymation style"',
                         "trigger_weight = 2.0"]
    swapped = tomllib.loads(text)
    swapped["styles"]["clay"].update(tomllib.loads("\n".join(commented)))
    config = parse_config(swapped, base_dir=tmp_path, check_models=False)
    assert (config.styles["clay"].trigger_words, config.styles["clay"].trigger_weight) == ("claymation style", 2)
    with pytest.raises(ConfigError, match=r"styles\.clay\.lora: no file or folder at .*CLAYMATE_V2\.03_"):
        parse_config(swapped, base_dir=tmp_path)


def test_unknown_key_is_named_with_the_allowed_keys(tiny_models, tmp_path):
    raw = _without_local_models(_root(), tiny_models)
    raw["pipeline"]["stpes"] = 30
    with pytest.raises(ConfigError) as err:
        _parse(tmp_path, raw)
    assert "unknown key 'pipeline.stpes'" in str(err.value)
    assert "steps" in str(err.value)


def test_unknown_key_inside_a_style_is_named(tiny_models, tmp_path):
    raw = _without_local_models(_root(), tiny_models)
    raw["styles"]["clay"]["trigger_wieght"] = 2
    with pytest.raises(ConfigError, match=r"unknown key 'styles\.clay\.trigger_wieght' \(allowed here: lora,"):
        _parse(tmp_path, raw)


def test_wrong_type_is_named(tiny_models, tmp_path):
    raw = _without_local_models(_root(), tiny_models)
    raw["pipeline"]["steps"] = "30"
    with pytest.raises(ConfigError, match=r"pipeline\.steps: must be a whole number \(got '30'\)"):
        _parse(tmp_path, raw)


@pytest.mark.parametrize(("section", "key", "value", "allowed"), [
    ("pipeline", "steps", 500, "less than or equal to 150"),
    ("pipeline", "megapixels", 0, "greater than 0"),
    ("pipeline", "device", "tpu", "'auto', 'cuda' or 'cpu'"),
    ("tagger", "general_threshold", 1.5, "less than or equal to 1"),
    ("limits", "user_queued", -1, "greater than or equal to 0"),
    ("safety", "max_rating", "nsfw", "'general', 'sensitive', 'questionable' or 'explicit'"),
    ("metrics", "host", "0.0.0.0", "must be a loopback address"),
    ("bot", "log_format", "xml", "'text' or 'json'"),
])
def test_out_of_range_value_says_what_is_allowed(tiny_models, tmp_path, section, key, value, allowed):
    raw = _without_local_models(_root(), tiny_models)
    raw[section][key] = value
    with pytest.raises(ConfigError) as err:
        _parse(tmp_path, raw)
    assert f"{section}.{key}:" in str(err.value) and allowed in str(err.value)


def test_out_of_range_style_strength_is_named(tiny_models, tmp_path):
    raw = _without_local_models(_root(), tiny_models)
    raw["styles"]["clay"]["default_strength"] = 1.5
    with pytest.raises(ConfigError, match=r"styles\.clay\.default_strength: .*less than or equal to 1"):
        _parse(tmp_path, raw)


def test_missing_model_file_names_the_key(tiny_models, tmp_path):
    raw = _without_local_models(_root(), tiny_models)
    raw["tagger"]["model"] = str(tmp_path / "no-such-tagger")
    with pytest.raises(ConfigError, match=r"tagger\.model: no file or folder at .*no-such-tagger"):
        _parse(tmp_path, raw)


def test_pickled_checkpoints_are_refused(tiny_models, tmp_path):
    raw = _without_local_models(_root(), tiny_models)
    (tmp_path / "model.ckpt").write_bytes(b"not loaded")
    raw["pipeline"]["base_model"] = str(tmp_path / "model.ckpt")
    with pytest.raises(ConfigError, match=r"pipeline\.base_model: model\.ckpt is a pickled checkpoint"):
        _parse(tmp_path, raw)


def test_relative_model_paths_start_at_the_config_folder(tiny_models, tmp_path):
    raw = _without_local_models(_root(), tiny_models)
    raw["tagger"]["model"] = tiny_models.tagger_folder.name
    config = parse_config(raw, base_dir=tiny_models.tagger_folder.parent)
    assert config.tagger.model == str(tiny_models.tagger_folder)


def test_url_model_needs_https_and_a_real_sha256(tiny_models, tmp_path):
    raw = _without_local_models(_root(), tiny_models)
    raw["styles"]["clay"]["lora"] = {"url": "https://example.invalid/clay.safetensors", "sha256": "abc"}
    with pytest.raises(ConfigError, match=r"styles\.clay\.lora\.sha256: .*64 hexadecimal digits"):
        _parse(tmp_path, raw)
    raw["styles"]["clay"]["lora"] = {"url": "ftp://example.invalid/clay.safetensors", "sha256": "a" * 64}
    with pytest.raises(ConfigError, match=r"styles\.clay\.lora\.url: must be an https:// URL"):
        _parse(tmp_path, raw)


def test_a_model_of_the_wrong_shape_says_how_models_are_named(tiny_models, tmp_path):
    raw = _without_local_models(_root(), tiny_models)
    raw["pipeline"]["vae"] = 5
    with pytest.raises(ConfigError, match=r"pipeline\.vae: must be a path, a Hugging Face repo id, a Civitai model "
                                          r"version \(civitai:<id>\), or \{ url"):
        _parse(tmp_path, raw)


def test_default_style_must_exist(tiny_models, tmp_path):
    raw = _without_local_models(_root(), tiny_models)
    raw["pipeline"]["default_style"] = "plasticine"
    with pytest.raises(ConfigError,
                       match=r"pipeline\.default_style = 'plasticine' names no style \(have: clay, likeness\)"):
        _parse(tmp_path, raw)


def test_broken_toml_is_reported_with_the_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[pipeline\nsteps = 3\n")
    with pytest.raises(ConfigError, match=r"config\.toml: not valid TOML"):
        load_config(path)


def test_tokens_come_from_the_environment_only(monkeypatch):
    monkeypatch.setenv("CLAYBOT_TEST_TOKEN", "  123:abc  ")
    assert token("CLAYBOT_TEST_TOKEN") == "123:abc"
    monkeypatch.delenv("CLAYBOT_TEST_TOKEN")
    assert token("CLAYBOT_TEST_TOKEN") is None


def test_a_style_that_leaves_keys_out_gets_the_clay_defaults(tiny_models, tmp_path):
    # A new style of one line: the tagger's "photo (medium), realistic" must not go into its clay prompt, and it
    # gets the negative prompt a clay style needs; the shipped style's values are the same defaults.
    from pipeline.gpu.prompt import prompt_tags
    from pipeline.gpu.tagger import Tags

    raw = _without_local_models(_root(), tiny_models)
    raw["styles"]["plasticine"] = {"trigger_words": "plasticine"}
    raw["styles"]["bare"] = {"negative_prompt": "", "clashing_tags": []}  # turned off on purpose: stays off
    config = _parse(tmp_path, raw)
    new, clay, bare = (config.styles[name] for name in ("plasticine", "clay", "bare"))
    assert (new.negative_prompt, new.clashing_tags) == (clay.negative_prompt, clay.clashing_tags)
    assert "photorealistic" in new.negative_prompt
    tags = Tags(general=[("photo (medium)", 0.9), ("realistic", 0.8), ("1girl", 0.7)], characters=[], ratings={})
    assert prompt_tags(tags, config.tagger, new) == ["1girl"]
    assert (bare.negative_prompt, bare.clashing_tags) == ("", [])
    assert prompt_tags(tags, config.tagger, bare) == ["photo (medium)", "realistic", "1girl"]
