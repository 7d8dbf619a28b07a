"""What the Telegram bot says about itself: its commands, the caption it answers to, /help and the command menu."""

from __future__ import annotations

import re

from telegram import BotCommand

from bot.config import Config
from bot.telegram.photos import download_limit
from pipeline.core.jobs import MAX_STRENGTH, MIN_STRENGTH
from pipeline.core.kinds import engine_takes
from pipeline.core.words import MAX_WORDS

COMMAND_NAME = re.compile(r"[a-z0-9_]{1,32}")  # what Telegram accepts as a command
SETTINGS_USAGE = "Group admins: /claysettings nsfw on (or off) lets me work on any photo in this chat."
ANIMATE_COMMAND = "animate"
ANIMATE_USAGE = ("Usage: /animate [seconds], as a reply to a picture: one of mine is animated as it is, a photo is "
                 "made clay first. Example: /animate 3")
PLAIN_PHOTO_HINT = ("Reply /clay to this photo (or /clay 0.6 to change it more) and I'll sculpt it in clay. "
                    "/help says more.")


def style_commands(config: Config) -> list[str]:
    """One command per style (``/clay`` for the default); names Telegram cannot take as commands are skipped."""
    return [name for name in config.styles if COMMAND_NAME.fullmatch(name)]


def caption_pattern(commands: list[str]) -> re.Pattern[str]:
    """``/clay[@bot] [strength]``: groups 1 the command, 2 the bot named, 3 the rest."""
    return re.compile(rf"^/({'|'.join(map(re.escape, commands))})(?:@(\w+))?(?:\s+(.*))?$", re.DOTALL)


def animate_pattern() -> re.Pattern[str]:
    """A photo's caption ``/animate[@bot] [seconds]``: groups 1 the bot named, 2 the rest."""
    return re.compile(rf"^/{ANIMATE_COMMAND}(?:@(\w+))?(?:\s+(.*))?$", re.DOTALL)


def command_menu(config: Config) -> list[BotCommand]:
    """The commands Telegram lists in its menu."""
    default = config.pipeline.default_style
    commands = [BotCommand(name, "Sculpt a photo in clay: send with a photo or reply to one" if name == default
                           else f"The {name} style: send with a photo or reply to one")
                for name in style_commands(config)]
    if config.animate.enabled:
        commands.append(BotCommand(ANIMATE_COMMAND, "A short clip of a picture: reply to one"))
    if credits_on(config):
        commands.append(BotCommand("balance", "Your credits: free today and bought"))
        commands.append(BotCommand("buy", "Buy credits with Telegram Stars"))
        commands.append(BotCommand("paysupport", "Help with a payment"))
    commands.append(BotCommand("claysettings", "This chat's settings (admins change them)"))
    commands.append(BotCommand("help", "How to use me"))
    return commands


def start_text(config: Config) -> str:
    """/start: three lines for someone who just arrived: what I do, how to ask (with an example), where the rest is."""
    default = config.styles[config.pipeline.default_style].default_strength
    rest = ["speeds"] if config.speed else []
    rest += ["buttons", "groups"] + (["clips"] if config.animate.enabled else []) + ["limits"]
    return "\n".join([
        "I turn photos into claymation pictures.",
        f"Send a photo with the caption /clay, or reply /clay to one. Example: /clay 0.6 changes it more than the "
        f"default {default:g}.",
        f"/help tells the rest: {', '.join(rest)}.",
    ])


def credits_on(config: Config) -> bool:
    """[credits] enabled: the bot charges, and sells credits."""
    return config.credits.enabled


def help_text(config: Config, bot_username: str | None) -> str:
    """/help: every way to ask, in a few lines."""
    settings = config.telegram
    default = config.styles[config.pipeline.default_style].default_strength
    limit = download_limit(settings)
    most_mb = min(config.bot.max_photo_mb, limit / 2**20 if limit else config.bot.max_photo_mb)
    mention = f"/clay@{bot_username}" if bot_username else "/clay@<my name>"
    lines = [
        "I turn photos into claymation pictures.",
        f"• Send a photo with the caption /clay, or /clay 0.6 to change it more (strength {MIN_STRENGTH:g}–"
        f"{MAX_STRENGTH:g}, default {default:g}). Send it as a file to skip Telegram's compression.",
        "• Or reply /clay [strength] to any photo in the chat.",
    ]
    if config.speed:
        lines.append(f"• Add a speed: /clay {next(iter(config.speed))} or /clay 0.6 {next(iter(config.speed))} is "
                     f"quicker, /clay best the full-quality run (speeds: {', '.join(config.speed_names())}).")
    lines.append(f"• Add your own words last: /clay 0.6 as a knight in armour (up to {MAX_WORDS} characters).")
    edits = [name for name, style in config.styles.items() if not engine_takes(style.engine, "strength")]
    if edits:
        lines.append(f"• /clay {edits[0]} as a knight: clay by instruction, keeping the person's face and pose "
                     f"(no strength to give; 🎲 Again for another take).")
    if settings.reaction_emoji:
        lines.append(f"• In a group, react to a photo with {settings.reaction_emoji} and I answer with its clay "
                     f"version.")
    lines.append("• Under each picture: 🎲 Again (new seed), 💪 Stronger, 🪶 Weaker"
                 + (", and ⚡ Fast / 🎯 Best: the same picture at the other speed." if config.speed else "."))
    if config.animate.enabled:
        animate = config.animate
        lines.append(f"• 🎬 Animate under a picture makes a short clip of it (about {animate.seconds:.0f} s, looping, "
                     f"no sound). Or reply /animate [seconds] to a picture of mine, or to a photo (I make it clay "
                     f"first): /animate 2.5.")
    others = [f"/{name}" for name in style_commands(config) if name != config.pipeline.default_style]
    if others:
        lines.append(f"Other styles: {' '.join(others)}.")
    lines.append(f"Photos up to {most_mb:g} MB.")
    lines.append(f"Group admins: make me an admin so I see the group's photos and get reactions (Telegram sends "
                 f"reactions only to admin bots). Without that, my privacy mode shows me only commands: reply "
                 f"{mention} to a photo.")
    if credits_on(config):
        credits = config.credits
        lines.append(f"• Each picture or clip costs credits; you get {credits.free_per_day} free each day. /balance "
                     f"shows yours, /buy sells more (Telegram Stars); /paysupport for help with a payment, /terms.")
    if config.safety.limit(nsfw=False) is not None:
        lines.append(f"I make all-ages pictures only. {SETTINGS_USAGE}")
    return "\n".join(lines)
