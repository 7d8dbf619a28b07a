"""Tags become an A1111 prompt with the trigger weighted up; the syntax is parsed into weights correctly."""

from __future__ import annotations

from pipeline.core.settings import StyleSettings, TaggerSettings
from pipeline.gpu.prompt import build_prompt, escape, parse_attention, plain_text, prompt_tags
from pipeline.gpu.tagger import Tags

CLAY = StyleSettings(trigger_words="claymation style", trigger_weight=2.0,
                     clashing_tags=["realistic", "photo (medium)"])


def test_prompt_puts_the_weighted_trigger_first():
    assert build_prompt(CLAY, ["1girl", "smile"]) == "(claymation style:2), 1girl, smile"


def test_weight_one_leaves_the_trigger_plain_and_other_weights_are_written():
    assert build_prompt(CLAY, ["dog"], trigger_weight=1) == "claymation style, dog"
    assert build_prompt(CLAY, ["dog"], trigger_weight=1.5) == "(claymation style:1.5), dog"


def test_parentheses_in_tags_cannot_break_the_prompt():
    prompt = build_prompt(CLAY, ["kirby (series)", "smile"])
    assert prompt == r"(claymation style:2), kirby \(series\), smile"
    assert parse_attention(prompt) == [("claymation style", 2.0), (", kirby (series), smile", 1.0)]


def test_tags_are_cleaned_dropped_and_capped():
    tags = Tags(
        ratings={"general": 0.9},
        general=[("photo_(medium)", 0.95), ("1girl", 0.9), ("red_shirt", 0.8), ("^_^", 0.7), ("realistic", 0.6),
                 ("watermark", 0.5), ("smile", 0.4)],
        characters=[("hatsune_miku", 0.99)],
    )
    tagger = TaggerSettings(drop_tags=["watermark"], max_tags=4)
    assert prompt_tags(tags, tagger, CLAY) == ["hatsune miku", "1girl", "red shirt", "^_^"]


def test_tag_equal_to_the_trigger_is_not_repeated():
    tags = Tags(ratings={}, general=[("claymation_style", 0.9), ("dog", 0.8)])
    assert prompt_tags(tags, TaggerSettings(), CLAY) == ["dog"]


def test_a1111_weights_nest_and_brackets_lower():
    runs = dict(parse_attention("(a), [b], ((c)), (d:0.5) e"))
    assert runs["a"] == 1.1
    assert abs(runs["b"] - 1 / 1.1) < 1e-9
    assert abs(runs["c"] - 1.21) < 1e-9
    assert runs["d"] == 0.5


def test_unbalanced_or_odd_syntax_never_fails():
    assert parse_attention("(unclosed, x") == [("unclosed, x", 1.1)]
    assert parse_attention("") == [("", 1.0)]
    assert plain_text("a:b, ;-), -_-, ]") == "a:b, ;-), -_-, ]"


def test_escape_and_plain_text_round_trip():
    text = "kirby (series) [alt]"
    assert plain_text(escape(text)) == text


def test_a_persons_words_come_after_the_tags_and_cannot_reweight_the_style():
    style = StyleSettings(trigger_words="clay", trigger_weight=2.0)
    prompt = build_prompt(style, ["1girl"], words="as a knight:9) (nsfw:5) [x]")
    assert prompt == r"(clay:2), 1girl, as a knight:9\) \(nsfw:5\) \[x\]"
    weights = dict(parse_attention(prompt))
    assert weights["clay"] == 2.0
    assert weights[r", 1girl, as a knight:9) (nsfw:5) [x]"] == 1.0  # the words stay plain text at weight 1
    assert build_prompt(style, ["1girl"], words="") == "(clay:2), 1girl"
