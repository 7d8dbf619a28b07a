"""How a result looks on Discord (embed, picture, copy of the photo, buttons; a clip: embed, MP4, Delete), built in
one place for live answers and for answers after a restart; and the same message without its re-runs once its photo
is deleted."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass

import discord

from bot.config import Config
from bot.discord_buttons import ResultState, ResultView
from bot.discord_photos import SOURCE_NAME, PhotoMessage, fit_upload, source_copy
from bot.flow import shorten
from bot.options import WORDS_FIELD, UserError, speed_toggle, style_switch, words_in, words_line
from pipeline.core.jobs import MP4, Done

CLAY_COLOUR = discord.Colour(0xB86B3C)
PHOTO_GONE = "The photo this picture was made from was deleted, so I make no more pictures of it."


@dataclass(frozen=True)
class Requester:
    """Who asked for a picture, as its message names them."""

    id: int
    name: str


@dataclass
class ResultMessage:
    """Everything a result message is made of."""

    embed: discord.Embed
    files: list[discord.File]
    view: ResultView
    what: str = "clay picture"  # what a message in the channel calls it: "here is your clay picture."


async def render(config: Config, done: Done, source: bytes | None, requester: Requester, limit: int,
                 photo: PhotoMessage | None = None) -> ResultMessage:
    """A result as Discord shows it: a picture (``build_result``) or a clip (``build_clip``)."""
    if done.media == MP4:
        return build_clip(done, requester, limit, photo)
    return await build_result(config, done, source, requester, limit, photo)


def build_clip(done: Done, requester: Requester, limit: int, photo: PhotoMessage | None = None) -> ResultMessage:
    """A clip: the MP4 as an attachment (Discord plays it inline, above the embed), an embed that says what it is
    (style, seed, tags; its title links to the photo's message when there is one), and Delete. The worker
    encoded it within the interaction's attachment limit; one over ``limit`` (a smaller limit here after a
    restart) is refused rather than sent to be refused."""
    if len(done.image) > limit:
        raise UserError(f"The clip came out at {len(done.image) / 2**20:.1f} MB, over the "
                        f"{limit / 2**20:.1f} MB I can upload here.")
    embed = discord.Embed(title="\N{CLAPPER BOARD} Your clay clip", colour=CLAY_COLOUR,
                          url=photo.link if photo else None,
                          description=shorten(", ".join(done.tags), 300) if done.tags else "no tags")
    embed.add_field(name="Style", value=done.style)
    embed.add_field(name="Seed", value=str(done.seed))
    if requester.name:
        embed.set_footer(text=f"for {requester.name}")
    files = [discord.File(io.BytesIO(done.image), filename=f"clay-{done.seed}.mp4")]
    author = photo.author_id if photo is not None and photo.author_id != requester.id else None
    view = ResultView(ResultState(requester.id, done.style, done.strength, done.seed, done.speed, author),
                      reruns=False)
    return ResultMessage(embed, files, view, "clay clip")


async def build_result(config: Config, done: Done, source: bytes | None, requester: Requester, limit: int,
                       photo: PhotoMessage | None = None) -> ResultMessage:
    """The embed (style, strength, seed, tags; its title links to the photo's message when there is one), the
    image fitted to the upload limit, the copy of the photo (for the buttons), and the buttons."""
    max_input_pixels = int(config.pipeline.max_input_megapixels * 1e6)
    copy = None
    if source is not None:
        copy = await asyncio.to_thread(source_copy, source, limit // 4, max_input_pixels=max_input_pixels)
    image, name = await asyncio.to_thread(fit_upload, done.image, limit - len(copy or b""))
    embed = discord.Embed(title="Your clay picture", colour=CLAY_COLOUR, url=photo.link if photo else None,
                          description=shorten(", ".join(done.tags), 300) if done.tags else "no tags")
    embed.add_field(name="Style", value=done.style)
    if done.strength:  # an edit engine's picture has none
        embed.add_field(name="Strength", value=f"{done.strength:g}")
    embed.add_field(name="Seed", value=str(done.seed))
    if done.speed != "default":
        embed.add_field(name="Speed", value=done.speed)
    if done.words:  # Again reads them back from here
        embed.add_field(name=WORDS_FIELD, value=words_line(done.words), inline=False)
    embed.set_image(url=f"attachment://{name}")
    files = [discord.File(io.BytesIO(image), filename=name)]
    if copy is not None:
        embed.set_thumbnail(url=f"attachment://{SOURCE_NAME}")
        files.append(discord.File(io.BytesIO(copy), filename=SOURCE_NAME))
    if requester.name:
        embed.set_footer(text=f"for {requester.name}")
    author = photo.author_id if photo is not None and photo.author_id != requester.id else None
    view = ResultView(ResultState(requester.id, done.style, done.strength, done.seed, done.speed, author),
                      toggle=speed_toggle(done.speed, config.speed_names()) if done.strength else None,
                      animate=config.animate.enabled, switch=style_switch(done.style, list(config.styles)))
    return ResultMessage(embed, files, view)


def words_of(result: discord.Message | None) -> str | None:
    """The person's own words a result was made with (its embed's field), for Again; None when it has none."""
    embed = result.embeds[0] if result is not None and result.embeds else None
    field = next((f for f in embed.fields if f.name == WORDS_FIELD), None) if embed is not None else None
    return words_in(f"\n{field.value}") if field is not None else None


def photo_of(result: discord.Message, state: ResultState) -> PhotoMessage | None:
    """The message a result's photo was posted in (its embed's link), or None for a /clay attachment."""
    embed = result.embeds[0] if result.embeds else None
    return PhotoMessage.from_link(embed.url if embed else None, state.author or state.requester)


async def without_reruns(result: discord.Message, state: ResultState) -> None:
    """The result of a deleted photo: no more re-run buttons (Delete stays) and no copy of the photo."""
    embed = result.embeds[0] if result.embeds else None
    if embed is not None:
        embed = embed.copy()
        embed.set_thumbnail(url=None)
        embed.set_footer(text=f"{embed.footer.text or ''} · the photo was deleted".lstrip(" ·"))
    kept = [attachment for attachment in result.attachments if attachment.filename != SOURCE_NAME]
    await result.edit(embed=embed, attachments=kept, view=ResultView(state, reruns=False))
