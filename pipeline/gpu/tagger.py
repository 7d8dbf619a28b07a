"""The WD14 (SmilingWolf) booru tagger through onnxruntime, with the preprocessing its models were trained on."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.errors import ModelError
from pipeline.core.settings import TaggerSettings

logger = logging.getLogger(__name__)

RATING, GENERAL, CHARACTER = 9, 0, 4  # categories in selected_tags.csv


@dataclass(frozen=True)
class Tags:
    """What the tagger saw in one image: rating scores, and tags above threshold with their scores, best first."""

    ratings: dict[str, float]
    general: list[tuple[str, float]] = field(default_factory=list)
    characters: list[tuple[str, float]] = field(default_factory=list)

    @property
    def rating(self) -> str:
        """The most likely rating: general, sensitive, questionable or explicit."""
        return max(self.ratings, key=self.ratings.__getitem__) if self.ratings else "general"


class Tagger:
    """Scores images with a WD14 ONNX model (``model.onnx`` + ``selected_tags.csv`` in one folder)."""

    def __init__(self, folder: Path, settings: TaggerSettings, *, use_cuda: bool,
                 io_binding: bool | None = None) -> None:
        import onnxruntime as ort

        model_path, csv_path = folder / "model.onnx", folder / "selected_tags.csv"
        for path in (model_path, csv_path):
            if not path.is_file():
                raise ModelError(f"tagger.model: {folder} has no {path.name} (a WD14 tagger folder holds "
                                 "model.onnx and selected_tags.csv)")
        self.settings = settings
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(model_path), providers=providers)
        except Exception as err:
            raise ModelError(f"tagger.model: onnxruntime cannot load {model_path} ({err})") from None
        on_cuda = "CUDAExecutionProvider" in self.session.get_providers()
        # On CUDA, I/O binding lets onnxruntime copy the batch in once and skip its per-run output allocation.
        self.io_binding = on_cuda if io_binding is None else io_binding
        logger.info("tagger %s runs on %s%s", folder.name, ", ".join(self.session.get_providers()),
                    " with I/O binding" if self.io_binding else "")
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.output_name = self.session.get_outputs()[0].name
        height = model_input.shape[1]
        if not isinstance(height, int):
            raise ModelError(f"tagger.model: {model_path} does not declare a fixed input size (NHWC expected)")
        self.input_size = height
        with csv_path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        self.names = [row["name"] for row in rows]
        self.categories = np.array([int(row["category"]) for row in rows])

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB image → the model's input: padded to a white square, resized, BGR, float32 0–255, HWC.

        Resized first, then padded: the same picture as padding to a max(w, h) square and resizing that, without
        ever holding the big square (a 30000×40 photo would need a 2.7 GB canvas)."""
        width, height = image.size
        side = max(width, height)
        size = self.input_size
        fitted = (max(1, round(width * size / side)), max(1, round(height * size / side)))
        # Area averaging when shrinking and Lanczos when enlarging, as in the taggers' reference scripts.
        resample = Image.Resampling.BOX if side > size else Image.Resampling.LANCZOS
        small = image.convert("RGB").resize(fitted, resample)
        square = Image.new("RGB", (size, size), (255, 255, 255))
        square.paste(small, ((size - fitted[0]) // 2, (size - fitted[1]) // 2))
        return np.asarray(square, dtype=np.float32)[:, :, ::-1].copy()

    def scores(self, images: list[Image.Image]) -> np.ndarray:
        """Raw probabilities, one row per image, one column per line of selected_tags.csv."""
        batch = np.stack([self.preprocess(image) for image in images])
        if not self.io_binding:
            return self.session.run([self.output_name], {self.input_name: batch})[0]
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, batch)
        binding.bind_output(self.output_name)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def __call__(self, images: list[Image.Image]) -> list[Tags]:
        """Tags above the configured thresholds for each image, ratings apart."""
        return [self._select(row) for row in self.scores(images)]

    def _select(self, probs: np.ndarray) -> Tags:
        def above(category: int, threshold: float) -> list[tuple[str, float]]:
            hits = np.flatnonzero((self.categories == category) & (probs >= threshold))
            ranked = sorted(hits, key=lambda i: -probs[i])
            return [(self.names[i], float(probs[i])) for i in ranked]

        ratings = {self.names[i]: float(probs[i]) for i in np.flatnonzero(self.categories == RATING)}
        return Tags(
            ratings=ratings,
            general=above(GENERAL, self.settings.general_threshold),
            characters=above(CHARACTER, self.settings.character_threshold),
        )
