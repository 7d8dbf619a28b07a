"""Photos a hostile user sends: tiny files that are huge, thin or odd once decoded (for tests and benchmarks).

The big ones are written chunk by chunk with zlib, so making them costs no more memory than the file itself.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, *, bit_depth: int = 8, color_type: int = 0, palette: bytes | None = None,
        before_idat: bytes = b"", after_idat: bytes = b"") -> bytes:
    """A PNG of zero pixels of any size, made row by row (``color_type`` 0 grey, 2 RGB, 3 palette, 6 RGBA);
    extra chunks (already framed by ``chunk``) go before or after the pixel data."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    row = b"\0" + bytes((width * channels * bit_depth + 7) // 8)  # filter byte "none", then the row
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    parts = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", header)]
    if color_type == 3:
        parts.append(_chunk(b"PLTE", palette or bytes(range(256)) * 3))
    parts += [before_idat, _chunk(b"IDAT", idat), after_idat, _chunk(b"IEND", b"")]
    return b"".join(parts)


def exif_chunk(orientation: int) -> bytes:
    """A PNG eXIf chunk holding one EXIF orientation."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _chunk(b"eXIf", exif.tobytes()[6:] if exif.tobytes().startswith(b"Exif\0\0") else exif.tobytes())


def thin(width: int, height: int) -> bytes:
    """A greyscale PNG of any shape (a 200000×8 one is under 5 KB)."""
    return png(width, height)


def deep_grey(width: int = 8000, height: int = 5000) -> bytes:
    """A 16-bit greyscale PNG: 40 MP in about 75 KB (Pillow holds it as I;16, 80 MB)."""
    return png(width, height, bit_depth=16)


def palette_bomb(width: int = 8000, height: int = 5000) -> bytes:
    """A 1-bit palette PNG: 40 MP in a few KB, which becomes 160 MB of RGB once converted."""
    return png(width, height, bit_depth=1, color_type=3, palette=b"\xff\x00\x00\x00\x00\xff")


def chunk_flood(chunks: int = 1_700_000) -> bytes:
    """A 64×48 PNG with ``chunks`` empty private chunks around its pixels (20 MB at 1.7 million): Pillow reads
    each one in Python and keeps it."""
    empty = _chunk(b"prVt", b"")
    return png(64, 48, before_idat=empty * (chunks // 2), after_idat=empty * (chunks - chunks // 2))


def split_idat(data: bytes, piece: int = 8192) -> bytes:
    """The same PNG with its pixel data cut into IDAT chunks of ``piece`` bytes (libpng's default is 8 KB)."""
    start = data.index(b"IDAT") - 4
    idat = bytearray()
    position = start
    while data[position + 4:position + 8] == b"IDAT":
        length = int.from_bytes(data[position:position + 4], "big")
        idat += data[position + 8:position + 8 + length]
        position += 12 + length
    pieces = b"".join(_chunk(b"IDAT", bytes(idat[i:i + piece])) for i in range(0, len(idat), piece))
    return data[:start] + pieces + data[position:]


def animated_gif(frames: int = 200, size: tuple[int, int] = (256, 256)) -> bytes:
    """An animated GIF of many frames (only the first is wanted)."""
    images = [Image.new("P", size, i % 256) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=20)
    return buffer.getvalue()
