"""config.toml → typed, validated settings; every mistake stops start-up with one message naming the key."""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, get_origin

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails

from pipeline.core import models
from pipeline.core.errors import ClaybotError, ModelError
from pipeline.core.guide_specs import absolutize_guides, model_specs
from pipeline.core.settings import GpuSettings, QueueSettings, Settings, UrlModel

if TYPE_CHECKING:
    from pipeline.core.kinds import JobKind


logger = logging.getLogger(__name__)


class ConfigError(ClaybotError):
    """config.toml is unreadable or holds a value claybot cannot use."""


class BotSettings(Settings):
    """What both front ends share."""

    data_dir: str = "data"
    max_photo_mb: Annotated[float, Field(gt=0.0, le=2000.0)] = 20.0
    photo_budget_mb: Annotated[float, Field(gt=0.0, le=100_000.0)] = 100.0
    photo_budget_wait: Annotated[float, Field(ge=0.0, le=3600.0)] = 300.0
    log_format: Literal["text", "json"] = "text"

    @field_validator("photo_budget_mb")
    @classmethod
    def _room_for_one(cls, budget: float, info: ValidationInfo) -> float:
        largest = info.data.get("max_photo_mb")
        if largest is not None and budget < largest:
            raise ValueError(f"must be at least bot.max_photo_mb ({largest:g}): room for one photo of the largest size")
        return budget


Count = Annotated[int, Field(ge=0, le=1_000_000)]


class LimitSettings(Settings):
    """How often people and chats may ask (0: no limit), and how many photos one person may have in the queue."""

    user_per_minute: Count = 4
    user_per_hour: Count = 30
    chat_per_minute: Count = 15
    chat_per_hour: Count = 200
    user_queued: Count = 2
    # Clips ([animate]) cost tens of times a picture: limits of their own, on top of the ones above.
    clip_user_per_hour: Count = 3
    clip_chat_per_hour: Count = 12
    clips_waiting: Count = 4  # clips waiting or being made at once, everyone's together

    def windows(self, scope: str) -> list[tuple[int, float]]:
        """(most requests, window in seconds) for ``"user"`` or ``"chat"``, the limits of any request that are set
        (a kind's own come from its ``limits``, pipeline/core/kinds)."""
        per = {"minute": 60.0, "hour": 3600.0}
        return [(count, seconds) for name, seconds in per.items() if (count := getattr(self, f"{scope}_per_{name}"))]


class PackSettings(Settings):
    """One pack of credits for sale: its price in Telegram Stars and, optionally, its Discord SKU."""

    id: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,32}$")]
    credits: Annotated[int, Field(ge=1, le=1_000_000)]
    stars: Annotated[int, Field(ge=1, le=100_000)] = 50
    discord_sku: str = ""


class CreditSettings(Settings):
    """Credits: what each kind of job costs, the free allowance, the spend caps and the packs for sale (off by
    default: then nothing is counted)."""

    enabled: bool = False
    picture: Count = 1
    clip: Count = 8
    free_per_day: Count = 3
    chat_per_day: Count = 0
    daily_cap: Count = 0
    owners: list[Annotated[str, Field(pattern=r"^(telegram|discord):[0-9A-Za-z_-]+$")]] = Field(default_factory=list)
    paysupport: str = "For help with a payment, write to the operator of this bot."
    terms: str = "Credits buy pictures and clips from this bot; they are not refundable once spent."
    packs: list[PackSettings] = Field(default_factory=list)

    @field_validator("packs")
    @classmethod
    def _unique_ids(cls, packs: list[PackSettings]) -> list[PackSettings]:
        ids = [pack.id for pack in packs]
        if len(set(ids)) != len(ids):
            raise ValueError("each pack needs its own id")
        return packs

    def cost(self, kind: JobKind) -> int:
        """Credits a job of ``kind`` costs: this section's key of the kind's name, else the kind's own ``cost``."""
        value = getattr(self, kind.name, None) if kind.name in type(self).model_fields else None
        return int(value) if isinstance(value, int) else int(kind.cost)


Rating = Literal["general", "sensitive", "questionable", "explicit"]


class SafetySettings(Settings):
    """The SFW gate: the most each kind of chat may get, by the tagger's rating of the photo and the result."""

    max_rating: Rating = "sensitive"
    nsfw_max_rating: Rating = "explicit"

    def limit(self, nsfw: bool) -> str | None:
        """The ``max_rating`` a job from such a chat carries (None: no check at all)."""
        rating = self.nsfw_max_rating if nsfw else self.max_rating
        return None if rating == "explicit" else rating


class MetricsSettings(Settings):
    """The Prometheus endpoint: off by default, and only ever on a loopback address."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9464

    @field_validator("host")
    @classmethod
    def _loopback(cls, host: str) -> str:
        from bot.observability import is_loopback

        if not is_loopback(host):
            raise ValueError("must be a loopback address such as 127.0.0.1 or ::1 (metrics are for this machine; "
                             "put a proxy in front to reach them from elsewhere)")
        return host


class TelegramSettings(Settings):
    """The Telegram front end (the token itself comes from the environment)."""

    enabled: bool = True
    token_env: str = "CLAYBOT_TELEGRAM_TOKEN"
    api_base_url: str = "https://api.telegram.org/bot"
    file_base_url: str = "https://api.telegram.org/file/bot"
    local_mode: bool = False
    reaction_emoji: str = "🗿"
    remember_photos: Annotated[int, Field(ge=0, le=1_000_000)] = 2000
    remember_hours: Annotated[float, Field(gt=0.0, le=24.0 * 365)] = 48.0
    status_edit_interval: Annotated[float, Field(ge=0.1, le=60.0)] = 3.0
    # Telegram's flood limit in groups (bot/telegram/flood.py): 0 messages = not paced ("retry after" is honoured
    # either way); and the gap between two help / usage / refusal replies to one person in a group.
    group_messages: Annotated[int, Field(ge=0, le=1000)] = 20
    group_window: Annotated[float, Field(gt=0.0, le=3600.0)] = 60.0
    reply_gap: Annotated[float, Field(ge=0.0, le=3600.0)] = 30.0

    @field_validator("api_base_url", "file_base_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("https://", "http://")):
            raise ValueError("must be an http(s):// URL such as https://api.telegram.org/bot")
        return url

    @field_validator("reaction_emoji")
    @classmethod
    def _telegram_reaction(cls, emoji: str) -> str:
        from telegram.constants import ReactionEmoji  # Telegram accepts only its own fixed set as reactions

        allowed = {member.value for member in ReactionEmoji}
        if not emoji or emoji in allowed:
            return emoji
        if emoji.replace("\ufe0f", "") in allowed:  # "❤️" typed with the emoji variation selector
            return emoji.replace("\ufe0f", "")
        raise ValueError("must be one of Telegram's reaction emoji (e.g. 🗿 👍 🔥 🤩 🎉), or \"\" for no reactions")


class DiscordSettings(Settings):
    """The Discord front end (the token itself comes from the environment)."""

    enabled: bool = True
    token_env: str = "CLAYBOT_DISCORD_TOKEN"
    # The defaults of servers that have not changed them with /claysettings.
    reactions: bool = True
    reaction_emoji: Annotated[str, Field(min_length=1, max_length=64)] = "\N{AMPHORA}"
    # Whether the privileged MESSAGE_CONTENT intent is switched on in the developer portal (reactions need it).
    message_content_intent: bool = False
    # 0: slash commands are registered globally; a server id: registered there only, updated instantly.
    test_guild_id: Annotated[int, Field(ge=0)] = 0
    guild_ready_timeout: Annotated[float, Field(ge=0.0, le=60.0)] = 2.0
    status_edit_interval: Annotated[float, Field(ge=0.1, le=60.0)] = 1.5
    # "" = discord.py's own; overrides for proxies and local testing (issue 9).
    api_base_url: str = ""
    gateway_url: str = ""

    @field_validator("api_base_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if url and not url.startswith(("https://", "http://")):
            raise ValueError("must be an http(s):// URL such as https://discord.com/api/v10, or empty")
        return url.rstrip("/")

    @field_validator("gateway_url")
    @classmethod
    def _ws_url(cls, url: str) -> str:
        if url and not url.startswith(("wss://", "ws://")):
            raise ValueError("must be a ws(s):// URL such as wss://gateway.discord.gg/, or empty")
        return url


class Config(GpuSettings):
    """The whole of config.toml."""

    bot: BotSettings = Field(default_factory=BotSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    telegram: TelegramSettings = Field(default_factory=TelegramSettings)
    discord: DiscordSettings = Field(default_factory=DiscordSettings)
    credits: CreditSettings = Field(default_factory=CreditSettings)

    def gpu(self) -> GpuSettings:
        """The part the pipeline worker needs, as pipeline's own type (the worker never imports bot/)."""
        return GpuSettings(pipeline=self.pipeline, tagger=self.tagger, styles=self.styles, speed=self.speed,
                           animate=self.animate, models=self.models)

    def model_specs(self) -> dict[str, models.ModelSpec]:
        """Every model the config names, by its key."""
        return model_specs(self)


def token(env_name: str) -> str | None:
    """A bot token from the environment variable the config names (never from a file)."""
    value = os.environ.get(env_name, "").strip()
    return value or None


def load_config(path: str | Path, *, check_models: bool = True) -> Config:
    """Read and check config.toml; local model paths are taken relative to the file's folder."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file (copy config.toml from the repository and edit it)") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    return parse_config(raw, base_dir=path.resolve().parent, source=str(path), check_models=check_models)


def parse_config(
    raw: dict[str, Any], *, base_dir: Path, source: str = "config.toml", check_models: bool = True
) -> Config:
    """Validate a parsed TOML document into a Config (and that its local model files exist)."""
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_explain(_most_relevant(err.errors()))}") from None
    config = _with_absolute_models(config, base_dir)
    try:
        config = _styles_on(config)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    for key, spec in config.model_specs().items():
        try:
            models.check_spec(spec, key)  # a malformed Civitai reference is a config mistake, models or not
            if check_models:
                models.check_local(spec, key)
        except ModelError as err:
            raise ConfigError(f"{source}: {err}") from None
    return config


def _styles_on(config: Config) -> Config:
    """The config with only the styles it offers: ``enabled = false`` ones left out, and ``"auto"`` ones kept only
    when their own model (an edit style's, or a LoRA) is on this machine already."""
    store = models.ModelStore.of(config.pipeline)
    kept = {}
    for name, style in config.styles.items():
        own = (f"styles.{name}.edit.model", style.edit.model) if style.engine == "edit" else (
            f"styles.{name}.lora", style.lora)
        on = style.enabled is True or (style.enabled == "auto"
                                       and (not own[1] or models.on_disk(own[1], own[0], store) is not None))
        if on:
            kept[name] = style
        elif style.enabled == "auto":
            logger.info("style %s is off: its model %s is not on this machine (enabled = \"auto\"); set "
                        "styles.%s.enabled = true and run `claybot models` to fetch it", name,
                        models.describe(own[1]), name)
    default = config.pipeline.default_style
    if default not in kept:
        why = "enabled = false" if config.styles[default].enabled is False else (
            'enabled = "auto" and its model is not on this machine')
        raise ConfigError(f"pipeline.default_style = {default!r} is off ({why}); turn it on or pick another style")
    return config if len(kept) == len(config.styles) else config.model_copy(update={"styles": kept})


def _with_absolute_models(config: Config, base_dir: Path) -> Config:
    p = config.pipeline
    pipeline = p.model_copy(update={
        "base_model": models.absolutize(p.base_model, base_dir),
        "base_config": models.absolutize(p.base_config, base_dir),
        "vae": models.absolutize(p.vae, base_dir),
    })
    tagger = config.tagger.model_copy(update={"model": models.absolutize(config.tagger.model, base_dir)})
    styles = {name: absolutize_guides(s.model_copy(update={
        "lora": models.absolutize(s.lora, base_dir),
        "edit": s.edit.model_copy(update={"model": models.absolutize(s.edit.model, base_dir),
                                          "config": models.absolutize(s.edit.config, base_dir)}),
    }), base_dir) for name, s in config.styles.items()}
    speed = {name: s.model_copy(update={"lora": models.absolutize(s.lora, base_dir)})
             for name, s in config.speed.items()}
    animate = config.animate.model_copy(update={"model": models.absolutize(config.animate.model, base_dir)})
    data_dir = Path(os.path.expanduser(config.bot.data_dir))
    bot = config.bot.model_copy(update={"data_dir": str(data_dir if data_dir.is_absolute() else base_dir / data_dir)})
    return config.model_copy(update={"pipeline": pipeline, "tagger": tagger, "styles": styles, "speed": speed,
                                     "animate": animate, "bot": bot})


def _most_relevant(errors: list[ErrorDetails]) -> ErrorDetails:
    """For a model given as a table, the error of the {url, sha256} branch rather than 'not a string'."""
    first = errors[0]
    if first["loc"][-1:] == ("str",) and isinstance(first.get("input"), dict) and len(errors) > 1:
        return errors[1]
    return first


def _explain(error: ErrorDetails) -> str:
    """One pydantic error → 'key: what is wrong and what is allowed'."""
    # union branch tags ("str", "UrlModel") and validator tags are not keys; a key such as "structure" is
    loc = [str(part) for part in error["loc"]
           if str(part) not in ("str", "UrlModel") and not str(part).startswith("function")]
    key = ".".join(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = _section_model(loc[:-1])
        allowed = ", ".join(parent.model_fields) if parent else ""
        return f"unknown key '{key}'" + (f" (allowed here: {allowed})" if allowed else "")
    value = error.get("input")
    got = "" if isinstance(value, dict) else f" (got {value!r})"
    message = error["msg"].removeprefix("Value error, ")
    if kind in ("float_type", "int_type", "bool_type", "string_type", "list_type", "dict_type"):
        message = {"float_type": "must be a number", "int_type": "must be a whole number",
                   "bool_type": "must be true or false", "string_type": "must be a string in quotes",
                   "list_type": "must be a list, e.g. [\"a\", \"b\"]", "dict_type": "must be a table"}[kind]
    if error["loc"][-1:] in (("str",), ("UrlModel",)):
        message = ('must be a path, a Hugging Face repo id, a Civitai model version (civitai:<id>), or '
                   '{ url = "https://…", sha256 = "…" }')
    return f"{key}: {message}{got}" if loc else message


def _section_model(loc: list[str]) -> type[Settings] | None:
    """The settings class of a config section (to list its allowed keys); tables of tables skip their names."""
    model: type[Settings] = Config
    parts = iter(loc)
    for part in parts:
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        if get_origin(annotation) is dict:
            model = get_args(annotation)[1]
            if next(parts, None) is None:  # the table's own name, e.g. the style's
                return None
        elif isinstance(annotation, type) and issubclass(annotation, Settings):
            model = annotation
        else:
            return None
    return model


__all__ = ["Config", "ConfigError", "UrlModel", "load_config", "parse_config", "token"]
