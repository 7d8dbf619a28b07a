"""The WD14 tagger run through onnxruntime for real, on the tiny tagger whose scores numpy can recompute."""

from __future__ import annotations

import csv
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from pipeline.core.errors import ModelError
from pipeline.core.settings import TaggerSettings
from pipeline.gpu.tagger import Tagger
from pipeline.gpu.tiny import write_tiny_tagger

# Square solid colours (RGB): padding cannot add white and resizing cannot change the mean.
COLOURS = [(255, 0, 0), (0, 0, 255), (200, 120, 40), (30, 200, 90), (128, 128, 128)]
GENERAL, CHARACTER, RATING = 0, 4, 9


def _expected_probabilities(folder, rgb: tuple[int, int, int]) -> np.ndarray:
    """sigmoid(W · mean_bgr / 255 + b), from the ONNX file's initializers, independent of claybot's code."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(folder / "model.onnx"))
    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    bgr = np.array(rgb[::-1], dtype=np.float64) / 255.0
    return 1.0 / (1.0 + np.exp(-(bgr @ init["W"] + init["b"])))


def _csv_rows(folder) -> list[tuple[str, int]]:
    with (folder / "selected_tags.csv").open(newline="", encoding="utf-8") as handle:
        return [(row["name"], int(row["category"])) for row in csv.DictReader(handle)]


def _above(rows, probs, category: int, threshold: float) -> dict[str, float]:
    return {name: p for (name, cat), p in zip(rows, probs, strict=True) if cat == category and p >= threshold}


@pytest.fixture(scope="module")
def tagger(tiny_models) -> Tagger:
    return Tagger(tiny_models.tagger_folder, TaggerSettings(), use_cuda=False)


def test_tagger_returns_the_tags_the_model_scores_above_threshold_ratings_apart(tiny_models, tagger):
    folder = tiny_models.tagger_folder
    rows = _csv_rows(folder)
    rating_names = {name for name, cat in rows if cat == RATING}
    assert len(rating_names) == 4
    settings = TaggerSettings()
    images = [Image.new("RGB", (64, 64), colour) for colour in COLOURS]

    results = tagger(images)

    assert len(results) == len(COLOURS)
    seen_general: set[frozenset[str]] = set()
    for colour, tags in zip(COLOURS, results, strict=True):
        probs = _expected_probabilities(folder, colour)
        # No tag sits so close to a threshold that float32 rounding could flip it.
        assert np.min(np.abs(probs - settings.general_threshold)) > 1e-4
        assert np.min(np.abs(probs - settings.character_threshold)) > 1e-4
        general = _above(rows, probs, GENERAL, settings.general_threshold)
        characters = _above(rows, probs, CHARACTER, settings.character_threshold)
        # The selection is not trivial: some general tags are in, some are out.
        assert 0 < len(general) < sum(cat == GENERAL for _, cat in rows)

        got_general = dict(tags.general)
        assert set(got_general) == set(general), colour
        for name, score in tags.general:
            assert score == pytest.approx(general[name], abs=1e-5)
        scores = [score for _, score in tags.general]
        assert scores == sorted(scores, reverse=True), "general tags must come best first"

        assert {name for name, _ in tags.characters} == set(characters)
        for name, score in tags.characters:
            assert score == pytest.approx(characters[name], abs=1e-5)
        char_scores = [score for _, score in tags.characters]
        assert char_scores == sorted(char_scores, reverse=True)

        expected_ratings = {name: p for (name, cat), p in zip(rows, probs, strict=True) if cat == RATING}
        assert set(tags.ratings) == rating_names
        for name, score in tags.ratings.items():
            assert score == pytest.approx(expected_ratings[name], abs=1e-5)
        assert tags.rating == max(expected_ratings, key=expected_ratings.__getitem__)

        named = {name for name, _ in tags.general} | {name for name, _ in tags.characters}
        assert not named & rating_names, "a rating must never be a tag"
        seen_general.add(frozenset(general))
    # The colour matters (BGR order, W): different colours give different tag sets.
    assert len(seen_general) > 1


def test_tagger_reads_bgr_so_swapping_red_and_blue_changes_the_scores(tiny_models, tagger):
    red, blue = tagger.scores([Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255))])
    assert red == pytest.approx(_expected_probabilities(tiny_models.tagger_folder, (255, 0, 0)), abs=1e-5)
    assert blue == pytest.approx(_expected_probabilities(tiny_models.tagger_folder, (0, 0, 255)), abs=1e-5)
    assert np.max(np.abs(red - blue)) > 0.1


def test_tagger_honours_the_thresholds_in_its_settings(tiny_models, tagger):
    image = [Image.new("RGB", (64, 64), (200, 120, 40))]
    default = tagger(image)[0]
    strict = Tagger(tiny_models.tagger_folder, TaggerSettings(general_threshold=0.99, character_threshold=1.0),
                    use_cuda=False)(image)[0]
    loose = Tagger(tiny_models.tagger_folder, TaggerSettings(character_threshold=0.0), use_cuda=False)(image)[0]

    assert len(strict.general) < len(default.general)
    assert all(score >= 0.99 for _, score in strict.general)
    assert default.characters and not strict.characters
    all_characters = {name for name, cat in _csv_rows(tiny_models.tagger_folder) if cat == CHARACTER}
    assert {name for name, _ in loose.characters} == all_characters
    assert len(all_characters) > len(default.characters)
    # Ratings are reported whatever the thresholds.
    assert strict.ratings == pytest.approx(default.ratings)


def test_tagger_reads_its_input_size_from_the_graph_and_feeds_bgr_float32(tmp_path):
    folder = write_tiny_tagger(tmp_path / "wd14-48", input_size=48)
    tagger = Tagger(folder, TaggerSettings(), use_cuda=False)
    assert tagger.input_size == 48

    for size in [(100, 100), (20, 20)]:  # shrunk (area) and enlarged (Lanczos)
        array = tagger.preprocess(Image.new("RGB", size, (255, 0, 0)))
        assert array.shape == (48, 48, 3)
        assert array.dtype == np.float32
        assert array.min() >= 0.0 and array.max() <= 255.0
        np.testing.assert_allclose(array.reshape(-1, 3), np.tile([0.0, 0.0, 255.0], (48 * 48, 1)), atol=0.5)
    # And the session takes that size: a 48-pixel batch runs.
    assert tagger.scores([Image.new("RGB", (60, 60), (10, 20, 30))]).shape == (1, len(_csv_rows(folder)))


def test_preprocess_pads_a_wide_image_to_a_centred_square_on_white(tagger):
    array = tagger.preprocess(Image.new("RGB", (40, 20), (0, 0, 0)))
    size = tagger.input_size
    assert array.shape == (size, size, 3)
    # 40×20 → a 40×40 square with 10 white rows above and below → at 32 px: 8 white, 16 black, 8 white rows.
    band = size // 4
    assert np.all(array[:band] == 255.0)
    assert np.all(array[size - band:] == 255.0)
    assert np.all(array[band:size - band] == 0.0)
    # Padding is vertical only: the centre row is black from edge to edge.
    assert np.all(array[size // 2] == 0.0)


def test_preprocess_pads_a_tall_image_left_and_right(tagger):
    array = tagger.preprocess(Image.new("RGB", (20, 40), (0, 0, 0)))
    size = tagger.input_size
    assert np.all(array[:, 0] == 255.0) and np.all(array[:, -1] == 255.0)
    assert np.all(array[:, size // 2] == 0.0)


@pytest.mark.parametrize("missing", ["selected_tags.csv", "model.onnx"])
def test_tagger_folder_missing_a_file_is_a_model_error_naming_the_key(tiny_models, tmp_path, missing):
    folder = tmp_path / "wd14"
    shutil.copytree(tiny_models.tagger_folder, folder)
    (folder / missing).unlink()
    with pytest.raises(ModelError, match=rf"tagger\.model: .*{re.escape(missing)}"):
        Tagger(folder, TaggerSettings(), use_cuda=False)


def test_tagger_folder_with_a_broken_onnx_file_is_a_model_error_naming_the_key(tiny_models, tmp_path):
    folder = tmp_path / "wd14"
    shutil.copytree(tiny_models.tagger_folder, folder)
    (folder / "model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(ModelError, match=r"tagger\.model: onnxruntime cannot load"):
        Tagger(folder, TaggerSettings(), use_cuda=False)
