"""Contact sheets for tuning a style by looking: the photo, then results with strength across, weight (and speed
preset) down."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

LABEL_HEIGHT = 22
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)


def sheet_size(cell: tuple[int, int], columns: int, rows: int) -> tuple[int, int]:
    """Pixels of a sheet: one column for the original plus one per strength; a label band under every row."""
    width, height = cell
    return (columns + 1) * width, rows * (height + LABEL_HEIGHT)


def cell_box(cell: tuple[int, int], column: int, row: int) -> tuple[int, int, int, int]:
    """Where result (strength ``column``, weight ``row``) sits on the sheet (column 0 is the first strength)."""
    width, height = cell
    left, top = (column + 1) * width, row * (height + LABEL_HEIGHT)
    return left, top, left + width, top + height


def contact_sheet(original: Image.Image, results: dict[tuple, Image.Image], strengths: list[float],
                  weights: list[float], presets: list[str] | None = None, *, row_name: str = "weight",
                  column_name: str = "strength") -> Image.Image:
    """The original top left, then each result at (strength, row value), each labelled underneath; the rows are
    trigger weights, or a guide's scales (``row_name``; "": one unlabelled row); the columns strengths, or seeds
    (``column_name``) for an engine without a strength.

    With ``presets``, one row per (row value, preset) and results keyed (strength, row value, preset)."""
    rows = [(w, p) for w in weights for p in presets] if presets else [(w, None) for w in weights]
    cell = next(iter(results.values())).size
    sheet = Image.new("RGB", sheet_size(cell, len(strengths), len(rows)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)

    def label(text: str, left: int, top: int) -> None:
        draw.text((left + 4, top + cell[1] + 4), text, fill=INK, font=font)

    sheet.paste(original.convert("RGB").resize(cell, Image.Resampling.LANCZOS), (0, 0))
    label("original", 0, 0)
    for row, (weight, preset) in enumerate(rows):
        for column, strength in enumerate(strengths):
            left, top, _, _ = cell_box(cell, column, row)
            key = (strength, weight) if preset is None else (strength, weight, preset)
            sheet.paste(results[key], (left, top))
            text = f"{column_name} {strength:g}" + (f" · {row_name} {weight:g}" if row_name else "")
            label(text + (f" · {preset}" if preset else ""), left, top)
    return sheet
