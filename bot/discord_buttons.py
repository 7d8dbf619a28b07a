"""A Discord result's buttons: their state, encoded in and parsed from the custom id in this one place, and who may
press them. The buttons keep working after a restart with nothing stored (discord.py's ``DynamicItem``); what a
press does is the Results cog's (cogs/results.py), which registers the classes that answer presses
(``answered_by``, ``UnknownButton``) when it loads. A result's view only shows the buttons."""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from typing import Any, Protocol

import discord

from bot.options import toggle_label

logger = logging.getLogger(__name__)

UNKNOWN_BUTTON = "I don't know that button (it may be from an older claybot); please send the photo again."
RESTARTING = "claybot is restarting; please try again in a minute."
MAX_CUSTOM_ID = 100  # Discord's limit on a component's custom id
BUTTONS = {  # action: (label, emoji, style)
    "again": ("Again", "\N{GAME DIE}", discord.ButtonStyle.primary),
    "stronger": ("Stronger", "\N{HEAVY PLUS SIGN}", discord.ButtonStyle.secondary),
    "weaker": ("Weaker", "\N{HEAVY MINUS SIGN}", discord.ButtonStyle.secondary),
    "delete": ("Delete", "\N{WASTEBASKET}", discord.ButtonStyle.danger),
}
ANIMATE = ("Animate", "\N{CLAPPER BOARD}", discord.ButtonStyle.success)  # a clip of this picture ([animate])
TOGGLE = {"Fast": "\N{HIGH VOLTAGE SIGN}", "Best": "\N{DIRECT HIT}"}  # the "speed" button: same picture, other preset
SWITCH_EMOJI = "\N{ARTIST PALETTE}"  # the "style" button: the same photo and words in the next style
# ``clay:action:requester:style:strength:seed``, then ``:speed``, then ``:author``. The speed part is read loosely
# here and checked against the config when pressed, so a preset the config no longer has gets an answer that says
# so instead of a silent "interaction failed".
CUSTOM_ID = (r"clay:(?P<action>again|stronger|weaker|delete|speed|animate|style):(?P<requester>\d+):(?P<style>[\w.-]*)"
             r":(?P<strength>\d*\.?\d+):(?P<seed>\d+)(?::(?P<speed>[^:]*)(?::(?P<author>\d+))?)?")


@dataclass(frozen=True)
class ResultState:
    """What a result's buttons need besides the photo: who asked, how it was made, and whose photo it was."""

    requester: int
    style: str  # "": the default style (a custom id too long for the style's name)
    strength: float
    seed: int
    speed: str | None = None  # the speed preset; None (buttons from before presets): the style's own
    author: int | None = None  # who posted the photo, when someone else did (a reaction, "Clay it")

    def custom_id(self, action: str) -> str:
        """The button's custom id (Discord allows 100 characters). Should everything not fit, the style is left
        out first (the default style, as Telegram's buttons do), then the author (only the requester may delete)."""
        for style, author in ((self.style, self.author), ("", self.author), ("", None)):
            speed = "" if self.speed is None and author is None else f":{self.speed or ''}"
            custom_id = (f"clay:{action}:{self.requester}:{style}:{self.strength:g}:{self.seed}{speed}"
                         + (f":{author}" if author is not None else ""))
            if len(custom_id) <= MAX_CUSTOM_ID:
                break
        return custom_id

    @classmethod
    def parse(cls, match: re.Match[str]) -> ResultState:
        """The state a custom id that matched ``CUSTOM_ID`` holds."""
        return cls(int(match["requester"]), match["style"], float(match["strength"]), int(match["seed"]),
                   match["speed"] or None, int(match["author"]) if match["author"] else None)

    def may_delete(self, user_id: int) -> bool:
        """The person who asked for the picture, and the person whose photo it is."""
        return user_id in (self.requester, self.author)


class ResultButton(discord.ui.DynamicItem[discord.ui.Button], template=CUSTOM_ID):
    """One of a result's buttons; its state lives in its custom id, so it works after a restart."""

    def __init__(self, action: str, state: ResultState) -> None:
        if action == "speed":  # Fast / Best: the state holds the preset it switches to
            label = toggle_label(state.speed or "default")
            emoji, style = TOGGLE[label], discord.ButtonStyle.secondary
        elif action == "style":  # 🎨: the state holds the style it switches to
            label, emoji, style = (state.style or "default").capitalize(), SWITCH_EMOJI, discord.ButtonStyle.secondary
        else:
            label, emoji, style = ANIMATE if action == "animate" else BUTTONS[action]
        super().__init__(discord.ui.Button(label=label, emoji=emoji, style=style, custom_id=state.custom_id(action)))
        self.action, self.state = action, state

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> ResultButton:
        return cls(match["action"], ResultState.parse(match))

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        if self.action == "delete" and not self.state.may_delete(interaction.user.id):
            await interaction.response.send_message("Only the person who asked for this picture, or whose photo it "
                                                    "is, can delete it.", ephemeral=True)
            return False
        return True


class ResultPresses(Protocol):
    """Who answers the presses on results' buttons (cogs/results.py's Results)."""

    async def pressed(self, interaction: discord.Interaction, action: str, state: ResultState) -> None:
        """Do what the button says, or tell the person why not (errors included: nothing is raised)."""


def answered_by(presses: ResultPresses) -> type[ResultButton]:
    """``ResultButton`` with its presses answered by ``presses``: the class the results cog registers with
    ``add_dynamic_items`` (what a press does is given here, not looked up)."""

    class AnsweredButton(ResultButton, template=CUSTOM_ID):
        async def callback(self, interaction: discord.Interaction) -> None:
            await presses.pressed(interaction, self.action, self.state)

    return AnsweredButton


class ResultView(discord.ui.View):
    """Again · Stronger · Weaker (not for a picture without a strength) · Delete, Fast / Best (``toggle``: the
    other preset) when the config has presets, 🎨 the next style (``switch``) when it has several,
    and 🎬 Animate when clips are on (``animate``); only Delete once the photo is gone (``reruns`` False), and on a
    clip. Persistent (no timeout)."""

    def __init__(self, state: ResultState, toggle: str | None = None, *, reruns: bool = True,
                 animate: bool = False, switch: str | None = None) -> None:
        super().__init__(timeout=None)
        # a picture without a strength (the edit engine's): Stronger and Weaker would mean nothing
        actions = [a for a in BUTTONS if state.strength or a not in ("stronger", "weaker")] if reruns else ["delete"]
        for action in actions:
            self.add_item(ResultButton(action, state))
        if toggle is not None and reruns:
            self.add_item(ResultButton("speed", dataclasses.replace(state, speed=toggle)))
        if switch is not None and reruns:
            self.add_item(ResultButton("style", dataclasses.replace(state, style=switch)))
        if animate and reruns:
            self.add_item(ResultButton("animate", state))
        # Shown, never listened to: a view discord.py listens to would register its items' class for their custom
        # ids, in place of the class the results cog registered to answer them. A stopped view is only sent.
        self.stop()


class UnknownButton(discord.ui.DynamicItem[discord.ui.Button], template=r"clay:.*"):
    """A ``clay:`` button whose custom id none of ours matches (forged, or from a version that is gone): answered
    with a line that says so, where discord.py would leave the person with "This interaction failed"."""

    def __init__(self, custom_id: str) -> None:
        super().__init__(discord.ui.Button(label="?", custom_id=custom_id[:MAX_CUSTOM_ID]))
        self.known = re.fullmatch(CUSTOM_ID, custom_id) is not None  # then ResultButton answers it, not this

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> UnknownButton:
        return cls(match.group(0))

    async def callback(self, interaction: discord.Interaction) -> Any:
        if self.known:
            return
        logger.info("discord: a button with an unknown custom id %r", self.custom_id[:MAX_CUSTOM_ID])
        await interaction.response.send_message(UNKNOWN_BUTTON, ephemeral=True)


def state_of(message: discord.Message) -> ResultState | None:
    """The state a result message's buttons hold (its Delete button's), or None when it has none of ours."""
    for row in message.components:
        for component in getattr(row, "children", ()):
            match = re.fullmatch(CUSTOM_ID, getattr(component, "custom_id", None) or "")
            if match is not None:
                return ResultState.parse(match)
    return None
