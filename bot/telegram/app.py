"""The Telegram front end's wiring, in python-telegram-bot's style: build the Application, register the handlers,
run it (``TelegramFrontEnd``, as ``claybot run`` drives it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from telegram import Update
from telegram.error import InvalidToken, NetworkError, TelegramError
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    MessageReactionHandler,
    PreCheckoutQueryHandler,
    filters,
)

from bot.config import Config, ConfigError
from bot.flow import RequestFlow
from bot.observability import HIDE_SECRETS, hide_secret
from bot.outage import Outage, telegram_polling
from bot.store import ClaybotDatabase
from bot.telegram.buttons import ANIMATE_PATTERN, BUTTON_PATTERN
from bot.telegram.flood import FloodLimiter
from bot.telegram.handlers import TelegramRequests
from bot.telegram.help import ANIMATE_COMMAND, command_menu
from bot.telegram.hints import hint_for_plain_message
from bot.telegram.payments import BUY_PATTERN, PaymentsFirst, TelegramPayments
from bot.telegram.photos import download_limit
from bot.telegram.render import CAPTION_LIMIT, reply_to, send_result
from bot.telegram.transport import MAX_ANSWER, AiohttpRequest
from pipeline.core.errors import ClaybotError
from pipeline.core.jobs import Done

logger = logging.getLogger(__name__)

# pre_checkout_query: a Stars purchase waits for the yes of bot/telegram/payments.py; successful_payment is a message
ALLOWED_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY, Update.MESSAGE_REACTION, Update.PRE_CHECKOUT_QUERY]
POLL_TIMEOUT = 10  # seconds a getUpdates long poll waits for news
# Connections to the Bot API for every call but getUpdates (bot/telegram/transport.py), and how long a call may wait
# for a free one: a burst of 200 photos makes that many calls at once.
CONNECTIONS = 32
POOL_TIMEOUT = 30.0  # seconds a call may wait for a free connection (PTB's default, 1 s, fails calls in a burst)

# A logger's filters see only the records logged on it, not its children's: name each logger that may quote a URL.
TOKEN_QUOTING_LOGGERS = ("telegram.Bot", "telegram.ext.ExtBot", "telegram.ext.Updater", "telegram.ext.Application",
                         "telegram.ext", *(f"bot.telegram.{name}" for name in (
                             "app", "flood", "handlers", "payments", "photos", "render", "reply", "transport")))


def hide_token_in_logs(token: str) -> None:
    """Keep the token out of every log line PTB or this package writes (httpx's request lines are silenced); the
    `claybot` command's own handler hides it from every other logger too."""
    hide_secret(token)
    for name in TOKEN_QUOTING_LOGGERS:
        if HIDE_SECRETS not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(HIDE_SECRETS)
    for noisy in ("httpx", "httpcore"):  # httpx logs each request's URL at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_application(config: Config, flow: RequestFlow, token: str,
                      store: ClaybotDatabase | None = None) -> Application:
    """The PTB Application, pointed at the configured Bot API server, with every handler registered here."""
    settings = config.telegram
    hide_token_in_logs(token)
    application = (
        Application.builder()
        .token(token)
        .base_url(settings.api_base_url)
        .base_file_url(settings.file_base_url)
        .local_mode(settings.local_mode)
        .request(AiohttpRequest(connections=CONNECTIONS, pool_timeout=POOL_TIMEOUT,  # room for the largest photo
                                max_answer=max(MAX_ANSWER, flow.max_bytes(download_limit(settings)))))
        .rate_limiter(FloodLimiter(group_messages=settings.group_messages, group_window=settings.group_window))
        .get_updates_request(telegram_polling(outage := Outage("the Telegram Bot API")))
        .concurrent_updates(PaymentsFirst())  # in order, but a pre-checkout never waits behind another update
        .build()
    )
    application.bot_data["outage"] = outage  # start_polling's error_callback: no traceback per failed poll
    requests = TelegramRequests(config, flow, store if store is not None else flow.store)
    application.bot_data["requests"] = requests
    payments = TelegramPayments(flow.credits)
    application.bot_data["payments"] = payments
    requests.payments = payments

    only_new = filters.UpdateType.MESSAGE  # edits of old messages ask for nothing
    images = filters.PHOTO | filters.Document.IMAGE
    # group -1 sees every update before the others: remember photos for reactions, whatever else happens.
    application.add_handler(MessageHandler(only_new & images, requests.remember_photo), group=-1)
    # payments first; a pre-checkout is handled beside the other updates, never behind one (PaymentsFirst)
    application.add_handler(PreCheckoutQueryHandler(payments.on_pre_checkout))
    application.add_handler(MessageHandler(filters.SUCCESSFUL_PAYMENT, payments.on_successful_payment))
    application.add_handler(CallbackQueryHandler(payments.on_buy_button, pattern=BUY_PATTERN))
    if payments.on:
        application.add_handler(CommandHandler("paysupport", payments.on_paysupport, filters=only_new))
        application.add_handler(CommandHandler("balance", payments.on_balance, filters=only_new))
        application.add_handler(CommandHandler("buy", payments.on_buy, filters=only_new))
        application.add_handler(CommandHandler("terms", payments.on_terms, filters=only_new))
        application.add_handler(CommandHandler("refund", payments.on_refund, filters=only_new))
    application.add_handler(CommandHandler("start", requests.on_start, filters=only_new))
    application.add_handler(CommandHandler("help", requests.on_help, filters=only_new))
    application.add_handler(CommandHandler("claysettings", requests.on_settings, filters=only_new))
    application.add_handler(MessageHandler(
        only_new & (filters.PHOTO | filters.Document.ALL) & filters.CaptionRegex(requests.caption_command),
        requests.on_captioned_photo))
    application.add_handler(CommandHandler(requests.commands, requests.on_clay_command, filters=only_new))
    application.add_handler(MessageHandler(
        only_new & (filters.PHOTO | filters.Document.ALL) & filters.CaptionRegex(requests.animate_caption),
        requests.on_animate_caption))
    application.add_handler(CommandHandler(ANIMATE_COMMAND, requests.on_animate_command, filters=only_new))
    application.add_handler(MessageHandler(only_new & filters.ChatType.PRIVATE & images, requests.on_plain_photo))
    application.add_handler(MessageHandler(only_new & filters.ChatType.PRIVATE & ~filters.COMMAND
                                           & ~filters.StatusUpdate.ALL, hint_for_plain_message))
    if settings.reaction_emoji:
        application.add_handler(MessageReactionHandler(
            requests.on_reaction, message_reaction_types=MessageReactionHandler.MESSAGE_REACTION_UPDATED))
    # button presses, routed by family (bot/telegram/buttons.py); data no family claims gets an answer too
    application.add_handler(CallbackQueryHandler(requests.on_button, pattern=BUTTON_PATTERN))
    application.add_handler(CallbackQueryHandler(requests.on_animate_button, pattern=ANIMATE_PATTERN))
    application.add_handler(CallbackQueryHandler(requests.on_unknown_button))
    application.add_error_handler(requests.on_error)
    return application


class TelegramFrontEnd:
    """`claybot run`'s Telegram glue: long-polls the Bot API and serves requests through the shared flow."""

    name = "telegram"

    def __init__(self, config: Config, flow: RequestFlow, token: str) -> None:
        self.config = config
        self.application = build_application(config, flow, token)
        self.requests: TelegramRequests = self.application.bot_data["requests"]

    async def start(self) -> None:
        """Check the token, then poll for messages, button presses and reactions."""
        settings = self.config.telegram
        try:
            await self.application.initialize()
        except InvalidToken:  # PTB's own message quotes the token: never let it reach a log or the console
            raise ConfigError(f"Telegram refused the bot token in {settings.token_env}; "
                              f"check it with @BotFather") from None
        except NetworkError as err:
            raise ClaybotError(f"cannot reach the Telegram Bot API at {settings.api_base_url}: {err}") from None
        await self.application.start()
        try:  # Stars payments made while the bot was down
            await self.application.bot_data["payments"].reconcile(self.application.bot)
        except TelegramError as err:
            logger.warning("could not reconcile Stars payments from getStarTransactions: %s", err)
        try:
            await self.application.bot.set_my_commands(command_menu(self.config))
        except TelegramError as err:  # only the command menu is missing
            logger.warning("could not set the bot's command menu: %s", err)
        if self.application.updater is None:  # build_application always makes one
            raise ClaybotError("the Telegram application has no updater to poll with")
        await self.application.updater.start_polling(timeout=POLL_TIMEOUT, allowed_updates=ALLOWED_UPDATES,
                                                     error_callback=self.application.bot_data["outage"].failed)
        logger.info("Telegram bot @%s is polling (reactions: %s)", self.application.bot.username,
                    settings.reaction_emoji or "off")

    async def deliver(self, chat_id: str, done: Done | None, text: str, answer_to: dict[str, Any],
                      source: bytes | None = None) -> None:
        """A recovered job's answer, replying to the photo: the picture (or clip) as a live answer shows it (caption
        and buttons; the photo is the message it replies to, so ``source`` is not needed), or the reason; then the
        status message the old process left is removed."""
        bot = self.application.bot
        message_id, thread_id = answer_to.get("message_id"), answer_to.get("thread_id")
        if done is None:
            await bot.send_message(int(chat_id), text, reply_parameters=reply_to(message_id),
                                   message_thread_id=thread_id)
        else:
            sent = await send_result(bot, int(chat_id), done, text[:CAPTION_LIMIT], speeds=self.config.speed_names(),
                                     reply_to_id=message_id, thread_id=thread_id,
                                     animate=self.config.animate.enabled, styles=list(self.config.styles))
            self.requests.remember_result(sent)
        if answer_to.get("status_message_id"):  # the old process's "Queued, #3" line
            with contextlib.suppress(TelegramError):
                await bot.delete_message(int(chat_id), answer_to["status_message_id"])

    async def ended(self) -> Exception:
        """python-telegram-bot polls again by itself after network errors and Telegram's hiccups: never."""
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def stop_taking(self) -> None:
        """Stop polling; requests already running keep going and still send their answers."""
        updater = self.application.updater
        if updater is not None and updater.running:
            await updater.stop()

    async def close(self) -> None:
        """Give running requests a moment to send their answers, then stop and shut the application down."""
        await self.stop_taking()
        late = await self.requests.running.finish()
        if late:
            logger.warning("%d Telegram request(s) still running at close were cancelled", late)
        self.requests.uploading.stop()
        if self.application.running:
            await self.application.stop()
        await self.application.shutdown()
