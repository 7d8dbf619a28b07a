"""Photos on Discord: which image a message holds, where it was posted, fetching it within a cap, and fitting a
result (and the copy of its photo) to the upload limit."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import discord
import yarl
from PIL import Image

from bot.flow import RequestFlow, is_image, not_an_image
from bot.options import UserError
from pipeline.core.errors import BadImage
from pipeline.core.images import decode_thumbnail

logger = logging.getLogger(__name__)

SOURCE_NAME = "source.jpg"  # the photo a result was made from, carried by the result message for its buttons
SOURCE_MAX_PIXELS = 2_000_000  # above SDXL's working size, so "Again" on the copy matches the original
MESSAGE_LINK = re.compile(r"https://discord\.com/channels/(\d+|@me)/(\d+)/(\d+)")


@dataclass(frozen=True)
class PhotoMessage:
    """The message a photo was posted in (a /clay attachment has none): its author may delete the results, and
    once it is deleted its results make no more pictures."""

    guild_id: int | None
    channel_id: int
    message_id: int
    author_id: int

    @classmethod
    def of(cls, message: discord.Message) -> PhotoMessage:
        """Where ``message`` is, and who posted it."""
        return cls(message.guild.id if message.guild else None, message.channel.id, message.id, message.author.id)

    @classmethod
    def from_link(cls, url: str | None, author_id: int) -> PhotoMessage | None:
        """A message link (a result's embed links to its photo), or None when it is not one."""
        match = MESSAGE_LINK.fullmatch(url or "")
        if match is None:
            return None
        guild = None if match[1] == "@me" else int(match[1])
        return cls(guild, int(match[2]), int(match[3]), author_id)

    @property
    def link(self) -> str:
        """The message's link, as Discord's "Copy Message Link" gives it."""
        return f"https://discord.com/channels/{self.guild_id or '@me'}/{self.channel_id}/{self.message_id}"


@dataclass(frozen=True)
class DiscordImage:
    """An image on Discord a request can use (an attachment, an image embed), known from its metadata before it
    is downloaded."""

    filename: str
    content_type: str | None
    size: int | None
    read: Callable[[], Awaitable[bytes]]
    posted_in: PhotoMessage | None = None  # None: a /clay attachment

    @classmethod
    def from_attachment(cls, attachment: discord.Attachment, posted_in: PhotoMessage | None = None) -> DiscordImage:
        """An attached file (downloaded through discord.py's client)."""
        return cls(attachment.filename, attachment.content_type, attachment.size, attachment.read, posted_in)

    def check(self, flow: RequestFlow, platform_limit: int | None) -> None:
        """Refuse what is not an image or is too large, before anything is downloaded."""
        if not is_image(self.content_type, self.filename):
            raise not_an_image(self.content_type)
        flow.check_size(self.size, platform_limit)


def find_photo(message: discord.Message, session: aiohttp.ClientSession | None,
               max_bytes: int) -> DiscordImage | None:
    """The first image of a message: an attached image, else an image embed (a posted image link)."""
    posted_in = PhotoMessage.of(message)
    for attachment in message.attachments:
        if is_image(attachment.content_type, attachment.filename):
            return DiscordImage.from_attachment(attachment, posted_in)
    for embed in message.embeds:
        media = embed.image if embed.image.proxy_url else embed.thumbnail if embed.type == "image" else None
        if media is not None and media.proxy_url and session is not None:
            # Discord's media proxy, never the URL someone posted: it is Discord that fetched that one.
            url = media.proxy_url
            name = yarl.URL(url).name or "image"

            async def read(url: str = url, session: aiohttp.ClientSession = session) -> bytes:
                return await fetch_capped(session, url, max_bytes)
            return DiscordImage(name, "image/*", None, read, posted_in)
    return None


def picture_of(message: discord.Message) -> discord.Attachment | None:
    """A result message's clay picture: its image that is not the copy of the photo (None: it has none, e.g. a
    clip's message, or a result whose picture was removed)."""
    return next((attachment for attachment in message.attachments
                 if attachment.filename != SOURCE_NAME and is_image(attachment.content_type, attachment.filename)),
                None)


async def fetch_capped(session: aiohttp.ClientSession, url: str, max_bytes: int) -> bytes:
    """Download an image of unknown size, giving up as soon as it passes ``max_bytes``."""
    too_large = UserError(f"That image is larger than the {max_bytes / 2**20:.0f} MB I can take.")
    async with session.get(url) as response:
        if response.status != 200:
            raise UserError(f"I could not download that image (Discord answered {response.status}).")
        if not is_image(response.headers.get("Content-Type"), url):
            raise not_an_image(response.headers.get("Content-Type"))
        if response.content_length is not None and response.content_length > max_bytes:
            raise too_large
        data = bytearray()
        async for chunk in response.content.iter_chunked(1 << 16):
            data += chunk
            if len(data) > max_bytes:
                raise too_large
    return bytes(data)


def fit_upload(png: bytes, limit: int, name: str = "clay") -> tuple[bytes, str]:
    """The result as a PNG when it fits the upload limit, else as a high-quality JPEG or WebP (smaller if need be)."""
    if len(png) <= limit:
        return png, f"{name}.png"
    image = Image.open(io.BytesIO(png)).convert("RGB")
    width, height = image.size
    for scale in (1.0, 0.75, 0.5, 0.35, 0.25):
        candidate = image if scale == 1.0 else image.resize(
            (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.LANCZOS)
        for fmt, quality in (("JPEG", 92), ("WEBP", 90), ("JPEG", 80), ("WEBP", 75), ("JPEG", 65)):
            buffer = io.BytesIO()
            candidate.save(buffer, format=fmt, quality=quality)
            if buffer.tell() <= limit:
                return buffer.getvalue(), f"{name}.{'jpg' if fmt == 'JPEG' else 'webp'}"
    raise UserError("The picture came out too large to upload here.")


def source_copy(data: bytes, limit: int, *, max_input_pixels: int) -> bytes | None:
    """The photo as the JPEG a result message carries for its buttons; None when there is no room for it."""
    try:
        opened = Image.open(io.BytesIO(data))
        if opened.format == "JPEG" and opened.width * opened.height <= SOURCE_MAX_PIXELS and len(data) <= limit:
            return data  # already a small JPEG (e.g. the source.jpg of an earlier result): no generational loss
        # The chat process decodes only a bounded copy (reduced while decoding, one at a time, under a budget);
        # a photo too large for that goes without its copy rather than taking the process's memory.
        image = decode_thumbnail(data, max_pixels=max_input_pixels, thumb_pixels=SOURCE_MAX_PIXELS)
    except (BadImage, OSError, MemoryError) as err:
        logger.info("no copy of the photo on the result: %s", err)
        return None
    scale = min(1.0, (SOURCE_MAX_PIXELS / (image.width * image.height)) ** 0.5)
    for quality in (90, 80, 70):
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        buffer = io.BytesIO()
        image.resize(size, Image.Resampling.LANCZOS).save(buffer, format="JPEG", quality=quality)
        if buffer.tell() <= limit:
            return buffer.getvalue()
        scale *= 0.7
    return None
