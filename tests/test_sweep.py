"""`claybot sweep`: one contact sheet to tune a style by looking, built from the same queue and worker."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from bot.config import load_config
from pipeline.core.local import LocalQueue
from pipeline.core.sheet import LABEL_HEIGHT, cell_box, sheet_size
from tests.conftest import photo_bytes, submit

CLAYBOT = Path(sys.executable).parent / "claybot"
STRENGTHS, WEIGHTS, SEED = [0.3, 0.6], [1.0, 2.0], 5


def _claybot(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([CLAYBOT, *map(str, args)], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    return out


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


async def test_sweep_sheet_has_the_grid_size_labels_and_the_single_run_images(tiny_config_path, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(photo_bytes((160, 120)))
    sheet_path = tmp_path / "sheet.png"
    _claybot("sweep", photo, "-o", sheet_path, "--strengths", "0.3,0.6", "--weights", "1,2", "--seed", SEED,
             "--config", tiny_config_path)
    sheet = Image.open(sheet_path)

    def crop(strength, weight):
        return _pixels(sheet.crop(cell_box(cell, STRENGTHS.index(strength), WEIGHTS.index(weight))))

    # Every cell equals a job run alone with the same seed and settings; and the style's own weight (2, what a job
    # that names no weight gets) is the weight-2 cell.
    config = load_config(tiny_config_path)
    queue = LocalQueue(config.gpu(), config.queue.model_copy(update={"batch_window": 0.0}))
    await queue.start()
    try:
        plain = await (await submit(queue, photo.read_bytes(), strength=0.6, seed=SEED)).result(timeout=120)
        single = Image.open(io.BytesIO(plain.image))
        cell = single.size
        assert sheet.size == sheet_size(cell, len(STRENGTHS), len(WEIGHTS))
        assert np.abs(crop(0.6, 2.0) - _pixels(single)).mean() < 0.5
        for strength in STRENGTHS:
            for weight in WEIGHTS:
                handle = await submit(queue, photo.read_bytes(), strength=strength, seed=SEED, trigger_weight=weight)
                done = await handle.result(timeout=120)
                alone = _pixels(Image.open(io.BytesIO(done.image)))
                assert np.abs(crop(strength, weight) - alone).mean() < 0.5, (strength, weight)
    finally:
        await queue.close(grace=5)
    # Weight changes the picture: the sweep is not the same image four times.
    assert np.abs(crop(0.6, 1.0) - crop(0.6, 2.0)).mean() > 1.0

    # The original sits top left, and every cell has its label written under it.
    original = Image.open(io.BytesIO(photo.read_bytes())).resize(cell, Image.Resampling.LANCZOS)
    assert np.abs(_pixels(sheet.crop((0, 0, *cell))) - _pixels(original)).mean() < 2.0
    for row in range(len(WEIGHTS)):
        for column in range(-1 if row == 0 else 0, len(STRENGTHS)):
            left = (column + 1) * cell[0]
            top = row * (cell[1] + LABEL_HEIGHT) + cell[1]
            band = _pixels(sheet.crop((left, top, left + cell[0], top + LABEL_HEIGHT)))
            assert (band < 128).any(), f"no label under cell ({row}, {column})"
