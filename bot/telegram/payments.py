"""Credits on Telegram, paid in Telegram Stars: /balance, /buy, invoices, pre-checkout, payments, refunds.

Telegram's rules for digital goods: prices in Stars only (currency "XTR", an empty provider token, one price); the bot
must answer /paysupport; a pre_checkout_query must be answered within 10 s or the purchase is cancelled (answered here
from memory, in its own task: no database trip, no waiting on anything else); a successful_payment may come twice and
an old invoice may be paid again, so a payment is credited once per ``telegram_payment_charge_id`` (the ledger's unique
payment id, bot/credits.py); payments made while the bot was down are found in getStarTransactions at start-up.

The ledger is ``flow.credits`` (None when [credits] is off); this module only speaks Telegram.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence
from typing import Any, Protocol

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, LabeledPrice, Message, Update
from telegram.error import TelegramError
from telegram.ext import BaseUpdateProcessor, ContextTypes

from bot.options import UserError

logger = logging.getLogger(__name__)

PLATFORM = "telegram"
CURRENCY = "XTR"  # Telegram Stars: the only currency for digital goods
BUY_PREFIX = "buy"
BUY_PATTERN = re.compile(rf"^{BUY_PREFIX}\|")
PAYLOAD = re.compile(r"^pack:([a-z0-9_-]{1,32}):(\d{1,20})$")  # "pack:<pack id>:<buyer's user id>"
RECONCILE_PAGE = 100  # getStarTransactions' most per call
RECONCILE_PAGES = 20  # at most this many pages are read at start-up (2000 transactions)
REFUND_USAGE = "Usage: /refund CHARGE_ID (the telegram_payment_charge_id of a payment)."
PAYMENTS_OFF = "Payments are off on this bot."


class LedgerSettings(Protocol):
    enabled: bool
    owners: Sequence[str]
    paysupport: str
    terms: str
    free_per_day: int

    @property
    def packs(self) -> Sequence[Any]: ...


class Ledger(Protocol):
    """What this module needs of bot.credits.Credits."""

    settings: Any

    def pack(self, pack_id: str) -> Any: ...

    async def balance(self, account: str) -> Any: ...

    async def purchase(self, payment_id: str, account: str, pack_id: str, *,
                       platform_data: dict | None = None) -> Any: ...

    async def refund(self, payment_id: str) -> Any: ...

    async def known(self, payment_id: str) -> bool: ...


class PaymentsFirst(BaseUpdateProcessor):
    """Updates are handled one at a time, in order, as PTB does by default; except a pre_checkout_query, handled at
    once beside them: Telegram cancels a purchase whose query is not answered within 10 s, and the update before it
    may be waiting on a slow Bot API call (an admin check, a refusal sent under load)."""

    def __init__(self, most_pending: int = 1024) -> None:
        super().__init__(max_concurrent_updates=most_pending)
        self._in_order = asyncio.Lock()  # FIFO: updates reach it in the order they were fetched

    async def do_process_update(self, update: object, coroutine: Any) -> None:
        if isinstance(update, Update) and update.pre_checkout_query is not None:
            await coroutine
            return
        async with self._in_order:
            await coroutine

    async def initialize(self) -> None:
        """Nothing to set up."""

    async def shutdown(self) -> None:
        """Nothing to tear down."""


def account(user_id: int) -> str:
    """The ledger's name for a Telegram person."""
    return f"{PLATFORM}:{user_id}"


def payload(pack_id: str, user_id: int) -> str:
    """An invoice's payload: the pack and the person it was sent to (who alone may pay it)."""
    return f"pack:{pack_id}:{user_id}"


def parse_payload(text: str | None) -> tuple[str, int] | None:
    """``payload``'s (pack id, user id); None for anything that is not ours."""
    match = PAYLOAD.fullmatch(text or "")
    return (match.group(1), int(match.group(2))) if match else None


def pack_label(pack: Any) -> str:
    return f"Buy {pack.credits} credits · {pack.stars} ⭐"


def buy_buttons(packs: Sequence[Any]) -> InlineKeyboardMarkup | None:
    """One button per pack, each sending that pack's invoice (None when there is none to offer)."""
    rows = [[InlineKeyboardButton(pack_label(pack), callback_data=f"{BUY_PREFIX}|{pack.id}")] for pack in packs]
    return InlineKeyboardMarkup(rows) if rows else None


def balance_line(balance: Any) -> str:
    return (f"You have {balance.total} credit{'s' if balance.total != 1 else ''}: {balance.free} free today, "
            f"{balance.paid} bought.")


class TelegramPayments:
    """The payment handlers; ``credits`` is the flow's ledger (None: payments are off, and every purchase is
    refused at pre-checkout)."""

    def __init__(self, credits: Ledger | None) -> None:
        self.credits = credits if credits is not None and credits.settings.enabled else None

    @property
    def on(self) -> bool:
        return self.credits is not None

    def _ledger(self) -> Ledger:
        if self.credits is None:
            raise UserError(PAYMENTS_OFF)
        return self.credits

    def is_owner(self, user_id: int) -> bool:
        return self.credits is not None and account(user_id) in self.credits.settings.owners

    # -- commands ------------------------------------------------------------------------------------------------------

    async def on_balance(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/balance: the person's credits, free and bought."""
        ledger, message = self._ledger(), _message(update)
        if update.effective_user is None:
            return
        balance = await ledger.balance(account(update.effective_user.id))
        await message.reply_text(balance_line(balance), reply_markup=buy_buttons(ledger.settings.packs),
                                 do_quote=True)

    async def on_buy(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/buy: the packs, as buttons that send their invoices."""
        ledger, message = self._ledger(), _message(update)
        packs = list(ledger.settings.packs)
        if not packs:
            raise UserError("There is nothing to buy on this bot: everyone gets the free credits each day.")
        await message.reply_text("Credits pay for pictures and clips. Pick a pack (paid in Telegram Stars):",
                                 reply_markup=buy_buttons(packs), do_quote=True)

    async def on_paysupport(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/paysupport: Telegram requires every bot that sells to answer it."""
        ledger = self._ledger()
        await _message(update).reply_text(ledger.settings.paysupport, do_quote=True)

    async def on_terms(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        ledger = self._ledger()
        await _message(update).reply_text(ledger.settings.terms, do_quote=True)

    # -- buying ------------------------------------------------------------------------------------------------------

    async def on_buy_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """``buy|<pack>``: the pack's invoice, in the chat, for the person who pressed (only they may pay it)."""
        query = update.callback_query
        if query is None:
            return
        if self.credits is None:
            await query.answer(PAYMENTS_OFF, show_alert=True)
            return
        pack = self.credits.pack((query.data or "").partition("|")[2])
        if pack is None:
            await query.answer("That pack is not sold any more; /buy lists the packs.", show_alert=True)
            return
        await query.answer()
        buyer = query.from_user.id
        chat_id = query.message.chat.id if query.message is not None else buyer
        await context.bot.send_invoice(
            chat_id, title=f"{pack.credits} credits", payload=payload(pack.id, buyer), currency=CURRENCY,
            description=f"{pack.credits} credits for claymation pictures and clips, for "
                        f"{query.from_user.full_name}.",
            prices=[LabeledPrice(f"{pack.credits} credits", pack.stars)], provider_token="")
        logger.info("telegram: invoice for pack %s sent to user %s in chat %s", pack.id, buyer, chat_id)

    async def on_pre_checkout(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Pay pressed: yes when payments are on, the pack is sold, the price is the pack's and the payer is the
        person the invoice was sent to; else no, with the reason Telegram shows. Answered from memory at once."""
        query = update.pre_checkout_query
        if query is None:
            return
        reason = self.refusal(query.invoice_payload, query.from_user.id, query.currency, query.total_amount)
        if reason is None:
            await query.answer(ok=True)
        else:
            logger.info("telegram: pre-checkout from user %s refused: %s", query.from_user.id, reason)
            await query.answer(ok=False, error_message=reason)

    def refusal(self, invoice_payload: str, payer: int, currency: str, amount: int) -> str | None:
        """Why this purchase may not go ahead (None: it may)."""
        if self.credits is None:
            return PAYMENTS_OFF
        found = parse_payload(invoice_payload)
        pack = self.credits.pack(found[0]) if found else None
        if found is None or pack is None:
            return "This pack is not sold any more; send /buy for the current ones."
        if found[1] != payer:
            return "This invoice was made for someone else; send /buy for your own."
        if currency != CURRENCY or amount != pack.stars:
            return "The price has changed; send /buy for the current one."
        return None

    async def on_successful_payment(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """The payment went through: credit it once (Telegram may say so twice), and say the new balance."""
        message = _message(update)
        payment = message.successful_payment
        if payment is None or message.from_user is None:
            return
        text = await self.credit(payment.telegram_payment_charge_id, message.from_user.id, payment.invoice_payload,
                                 payment.total_amount, chat_id=message.chat.id)
        if text is not None:
            await message.reply_text(text, do_quote=True)

    async def credit(self, charge_id: str, payer: int, invoice_payload: str, amount: int, *,
                     chat_id: int | None) -> str | None:
        """Credit one Stars payment (idempotent); the line to tell the payer, None when it was credited before."""
        ledger = self.credits
        found = parse_payload(invoice_payload)
        if ledger is None or found is None or ledger.pack(found[0]) is None:
            # Paid, but not for anything this config sells: the operator must look (and may /refund).
            logger.error("telegram: payment %s by user %s (%s Stars, payload %r) matches no pack on sale: refund "
                         "it or credit it by hand", charge_id, payer, amount, invoice_payload[:64])
            return (f"Your payment went through, but I could not match it to a pack. Please write to support "
                    f"(/paysupport) quoting this id: {charge_id}")
        if found[1] != payer:
            logger.warning("telegram: payment %s paid by user %s for an invoice sent to %s: crediting the payer",
                           charge_id, payer, found[1])
        purchase = await ledger.purchase(charge_id, account(payer), found[0], platform_data={
            "user_id": payer, "chat_id": chat_id, "stars": amount, "payload": invoice_payload})
        if not purchase.new:
            logger.info("telegram: payment %s was credited already", charge_id)
            return None
        logger.info("telegram: payment %s by user %s credited (pack %s)", charge_id, payer, found[0])
        return f"Thank you! {ledger.pack(found[0]).credits} credits added. {balance_line(purchase.balance)}"

    # -- owners ------------------------------------------------------------------------------------------------------

    async def on_refund(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """An owner's ``/refund CHARGE_ID``: Telegram returns the Stars, then the credits are clawed back (what the
        person spent already cannot be, and is said)."""
        ledger, message = self._ledger(), _message(update)
        if update.effective_user is None or not self.is_owner(update.effective_user.id):
            raise UserError("Only the bot's owners can refund payments.")
        args = context.args or []
        if len(args) != 1 or not re.fullmatch(r"[\w.-]{1,128}", args[0]):
            raise UserError(REFUND_USAGE)
        charge_id = args[0]
        payer = await find_payer(context.bot, charge_id)
        if payer is None:
            raise UserError(f"I find no Stars payment {charge_id} to this bot.")
        try:
            await context.bot.refund_star_payment(payer, charge_id)
        except TelegramError as err:
            if "ALREADY_REFUNDED" not in str(err).upper():
                raise UserError(f"Telegram refused the refund: {err}") from err
            logger.info("telegram: payment %s was refunded already; clawing back its credits", charge_id)
        refund = await ledger.refund(charge_id)
        logger.info("telegram: owner %s refunded payment %s of user %s", update.effective_user.id, charge_id, payer)
        if refund.account is None:
            text = (f"Refunded {charge_id}: the Stars go back to user {payer}; that payment was never credited here, "
                    f"so there was nothing to claw back.")
        elif refund.repeated:
            text = f"Payment {charge_id} was refunded already; nothing more to claw back."
        else:
            text = (f"Refunded {charge_id}: the Stars go back to user {payer}; {refund.clawed} credits clawed back"
                    + (f", {refund.spent} already spent." if refund.spent else "."))
        await message.reply_text(text, do_quote=True)

    # -- start-up ----------------------------------------------------------------------------------------------------

    async def reconcile(self, bot: Bot) -> int:
        """Credit the Stars payments made while the bot was down (getStarTransactions, newest first) that the
        ledger does not know yet; stops after a page where every payment was known. Returns how many were new."""
        if self.credits is None:
            return 0
        refunded: set[str] = set()
        credited = 0
        for page in range(RECONCILE_PAGES):
            listed = await bot.get_star_transactions(offset=page * RECONCILE_PAGE, limit=RECONCILE_PAGE)
            unknown = 0
            for transaction in listed.transactions:
                if transaction.receiver is not None:  # money out: a refund (it shares the payment's id)
                    refunded.add(transaction.id)
                    continue
                source = transaction.source
                invoice_payload = getattr(source, "invoice_payload", None)
                user = getattr(source, "user", None)
                if user is None or parse_payload(invoice_payload) is None or transaction.id in refunded:
                    continue
                if await self.credits.known(transaction.id):
                    continue
                found = parse_payload(invoice_payload)
                if found is None or self.credits.pack(found[0]) is None:  # a pack no longer sold: the operator's call
                    logger.warning("telegram: payment %s by user %s is for pack %r, not sold any more: refund it or "
                                   "credit it by hand", transaction.id, user.id, found[0] if found else None)
                    continue
                unknown += 1
                text = await self.credit(transaction.id, user.id, invoice_payload or "", transaction.amount,
                                         chat_id=None)
                if text is not None:
                    credited += 1
                    with contextlib.suppress(TelegramError):  # the person may have blocked the bot meanwhile
                        await bot.send_message(user.id, f"A payment made while I was away is in. {text}")
            if len(listed.transactions) < RECONCILE_PAGE or not unknown:
                break
        if credited:
            logger.info("telegram: %d payment(s) made while the bot was down credited", credited)
        return credited


async def find_payer(bot: Bot, charge_id: str) -> int | None:
    """Who made the Stars payment ``charge_id``, from Telegram's own list."""
    for page in range(RECONCILE_PAGES):
        listed = await bot.get_star_transactions(offset=page * RECONCILE_PAGE, limit=RECONCILE_PAGE)
        for transaction in listed.transactions:
            user = getattr(transaction.source, "user", None)
            if transaction.id == charge_id and user is not None:
                return int(user.id)
        if len(listed.transactions) < RECONCILE_PAGE:
            break
    return None


def _message(update: Update) -> Message:
    message = update.effective_message
    if message is None:
        raise TypeError(f"update {update.update_id} has no message")
    return message
