"""Credits on Telegram, paid in Telegram Stars, end to end: the real python-telegram-bot Application against the fake
Bot API server (which checks what Telegram checks: XTR, no provider token, one price; answers to pre-checkout
queries), driven by real update JSON: pre_checkout_query and successful_payment (twice, too), and Telegram's list of
Stars transactions for payments made while the bot was down.

Most tests use ``Ledger`` below, a stand-in for bot/credits.py's Credits (the contract in CREDITS.md: balance, purchase
once per payment id, refund never below zero, known), so the Telegram side is tested on its own; the last ones run
`claybot run`'s own flow (bot/service.py make_flow: CreditsRule and Credits over the SQLite journal)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from bot.config import CreditSettings
from bot.flow import RequestFlow
from bot.service import make_flow
from bot.store import ClaybotDatabase
from bot.telegram import TelegramFrontEnd
from bot.telegram.payments import parse_payload, payload
from tests.fake_telegram import FakeTelegram, group_chat, private_chat, user
from tests.test_telegram import LANDSCAPE, TOKEN, Running, with_telegram

pytestmark = pytest.mark.asyncio(loop_scope="module")

ALICE, BOB, OWNER = user(2001, "Alice"), user(2002, "Bob"), user(2999, "Owner")
ALICE_CHAT, BOB_CHAT, OWNER_CHAT = private_chat(ALICE), private_chat(BOB), private_chat(OWNER)


@dataclass
class Pack:
    id: str
    credits: int
    stars: int
    discord_sku: str = ""


@dataclass
class Settings:
    enabled: bool = True
    free_per_day: int = 1
    owners: list[str] = field(default_factory=lambda: [f"telegram:{OWNER['id']}"])
    paysupport: str = "Payment trouble? Write to pay@example.org; refunds within 14 days."
    terms: str = "Credits are for pictures and clips from this bot; they do not expire."
    packs: list[Pack] = field(default_factory=lambda: [Pack("small", 10, 50), Pack("big", 60, 250)])


@dataclass
class Balance:
    free: int
    paid: int

    @property
    def total(self) -> int:
        return self.free + self.paid


@dataclass
class Purchase:
    new: bool
    balance: Balance


@dataclass
class Refund:
    account: str
    clawed: int
    spent: int
    repeated: bool = False


class Ledger:
    """The contract's Credits, in memory."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.paid: dict[str, int] = {}
        self.spent: dict[str, int] = {}
        self.payments: dict[str, tuple[str, int]] = {}  # payment id → (account, credits)
        self.refunded: set[str] = set()

    def pack(self, pack_id: str) -> Pack | None:
        return next((p for p in self.settings.packs if p.id == pack_id), None)

    async def balance(self, account: str) -> Balance:
        return Balance(self.settings.free_per_day, self.paid.get(account, 0))

    async def purchase(self, payment_id, account, pack_id, *, platform_data=None) -> Purchase:
        if payment_id in self.payments:
            return Purchase(False, await self.balance(account))
        credits = self.pack(pack_id).credits
        self.payments[payment_id] = (account, credits)
        self.paid[account] = self.paid.get(account, 0) + credits
        return Purchase(True, await self.balance(account))

    async def refund(self, payment_id) -> Refund:
        account, credits = self.payments[payment_id]
        if payment_id in self.refunded:
            return Refund(account, 0, 0, repeated=True)
        self.refunded.add(payment_id)
        clawed = min(credits, self.paid[account])
        self.paid[account] -= clawed
        return Refund(account, clawed, credits - clawed)

    async def known(self, payment_id) -> bool:
        return payment_id in self.payments


@contextlib.asynccontextmanager
async def paying_telegram(tiny_config, queue, ledger: Ledger, fake: FakeTelegram | None = None
                          ) -> AsyncIterator[Running]:
    """The real Application on the fake server, its flow carrying ``ledger`` as ``flow.credits``."""
    fake = fake or FakeTelegram(TOKEN)
    if not fake.port:
        await fake.start()
    config = with_telegram(tiny_config, fake)
    flow = RequestFlow(queue, config)
    flow.credits = ledger
    front_end = TelegramFrontEnd(config, flow, TOKEN)
    try:
        await asyncio.wait_for(front_end.start(), 15)
        yield Running(fake, front_end)
    finally:
        await asyncio.wait_for(front_end.close(), 30)


async def invoice_for(running: Running, who: dict, chat: dict, pack: str) -> dict:
    """``who`` sends /buy and presses the pack's button: the invoice Telegram got."""
    asked = await running.fake.send_text(chat, who, "/buy")
    menu = await running.text_for(asked)
    labels = {b["callback_data"]: b["text"] for row in menu.params["reply_markup"]["inline_keyboard"] for b in row}
    assert f"buy|{pack}" in labels
    before = len(running.fake.invoices)
    await running.fake.press(who, menu.result, f"buy|{pack}")
    await running.fake.wait_for(lambda c: c.method == "sendInvoice", answered=True, after=len(running.fake.calls) - 1)
    assert len(running.fake.invoices) == before + 1
    return running.fake.invoices[-1]


async def answer_to(running: Running, query_id: str) -> dict:
    await running.fake.wait_for(lambda c: c.method == "answerPreCheckoutQuery"
                                and c.params["pre_checkout_query_id"] == query_id, answered=True)
    return running.fake.pre_checkout_answers[query_id]


async def test_buy_pay_and_balance(tiny_config, queue):
    ledger = Ledger(Settings())
    async with paying_telegram(tiny_config, queue, ledger) as running:
        fake = running.fake
        await fake.wait_for(lambda c: c.method == "getUpdates" and "allowed_updates" in c.params, timeout=10)
        assert "pre_checkout_query" in fake.allowed_updates and "message" in fake.allowed_updates

        invoice = await invoice_for(running, ALICE, ALICE_CHAT, "small")
        assert invoice["currency"] == "XTR" and not invoice.get("provider_token")
        assert [p["amount"] for p in invoice["prices"]] == [50]
        assert parse_payload(invoice["payload"]) == ("small", ALICE["id"])

        query = await fake.pre_checkout(ALICE, invoice)
        answer = await answer_to(running, query)
        assert answer["ok"] is True

        paid = await fake.successful_payment(ALICE_CHAT, ALICE, fake.payment(ALICE, invoice))
        thanks = await running.text_for(paid)
        assert "10 credits added" in thanks.params["text"] and "11 credits" in thanks.params["text"]

        asked = await fake.send_text(ALICE_CHAT, ALICE, "/balance")
        assert (await running.text_for(asked)).params["text"].startswith("You have 11 credits: 1 free today, 10 bought")


async def test_the_same_successful_payment_twice_is_credited_once(tiny_config, queue):
    ledger = Ledger(Settings())
    async with paying_telegram(tiny_config, queue, ledger) as running:
        fake = running.fake
        invoice = await invoice_for(running, BOB, BOB_CHAT, "big")
        payment = fake.payment(BOB, invoice)
        first = await fake.successful_payment(BOB_CHAT, BOB, payment)
        await running.text_for(first)
        again = await fake.successful_payment(BOB_CHAT, BOB, payment)
        asked = await fake.send_text(BOB_CHAT, BOB, "/balance")
        answer = await running.text_for(asked)  # updates are handled in order: the second payment was seen
        assert "60 bought" in answer.params["text"]
        assert ledger.paid == {f"telegram:{BOB['id']}": 60}
        assert not [c for c in fake.calls_to("sendMessage") if c.reply_to == again["message_id"]]


async def test_forged_pre_checkouts_are_refused(tiny_config, queue):
    ledger = Ledger(Settings())
    async with paying_telegram(tiny_config, queue, ledger) as running:
        fake = running.fake
        invoice = await invoice_for(running, ALICE, ALICE_CHAT, "small")
        someone_else = await answer_to(running, await fake.pre_checkout(BOB, invoice))
        assert someone_else["ok"] is False and "someone else" in someone_else["error_message"]
        unknown = await answer_to(running, await fake.pre_checkout(ALICE, invoice,
                                                                   payload=payload("gold", ALICE["id"])))
        assert unknown["ok"] is False and "not sold" in unknown["error_message"]
        cheaper = await answer_to(running, await fake.pre_checkout(ALICE, invoice, total_amount=1))
        assert cheaper["ok"] is False
        garbage = await answer_to(running, await fake.pre_checkout(ALICE, invoice, payload="x" * 30))
        assert garbage["ok"] is False


async def test_a_pre_checkout_is_answered_while_another_update_is_still_being_handled(tiny_config, queue):
    ledger = Ledger(Settings())
    async with paying_telegram(tiny_config, queue, ledger) as running:
        fake = running.fake
        invoice = await invoice_for(running, ALICE, ALICE_CHAT, "small")
        slow = fake.hold("sendMessage")  # a slow answer (the Bot API under load) holds up the updates after it
        try:
            after = len(fake.calls)
            await fake.send_text(group_chat(), BOB, "/help")
            await fake.wait_for(lambda c: c.method == "sendMessage", after=after)
            query = await fake.pre_checkout(ALICE, invoice)
            assert (await answer_to(running, query))["ok"] is True
            answered = next(i for i, c in enumerate(fake.calls) if c.method == "answerPreCheckoutQuery")
            # answered while /help's answer was still on its way: no later try (after a time-out) came before it
            assert [c.method for c in fake.calls[after:answered]].count("sendMessage") == 1
        finally:
            slow.set()


async def test_a_payment_made_while_the_bot_was_down_is_credited_once_at_the_next_start(tiny_config, queue):
    ledger = Ledger(Settings())
    fake = FakeTelegram(TOKEN)
    await fake.start()
    try:
        async with paying_telegram(tiny_config, queue, ledger, fake) as running:
            invoice = await invoice_for(running, ALICE, ALICE_CHAT, "small")
        fake.payment(ALICE, invoice)  # paid while the bot was down: only getStarTransactions lists it
        fake.payment(BOB, {**invoice, "payload": "someone else's bot's payload"})  # not ours: left alone
        for _ in range(2):  # two starts: credited once
            after = len(fake.calls)
            async with paying_telegram(tiny_config, queue, ledger, fake):
                await fake.wait_for(lambda c: c.method == "getStarTransactions", after=after, answered=True)
        assert ledger.paid == {f"telegram:{ALICE['id']}": 10}
        told = [c for c in fake.calls_to("sendMessage") if c.params["chat_id"] == ALICE["id"]
                and "while I was away" in c.params["text"]]
        assert len(told) == 1 and "11 credits" in told[0].params["text"]
    finally:
        await fake.close()


async def test_an_owner_refunds_a_payment_and_its_credits_are_clawed_back(tiny_config, queue):
    ledger = Ledger(Settings())
    async with paying_telegram(tiny_config, queue, ledger) as running:
        fake = running.fake
        invoice = await invoice_for(running, ALICE, ALICE_CHAT, "small")
        payment = fake.payment(ALICE, invoice)
        await running.text_for(await fake.successful_payment(ALICE_CHAT, ALICE, payment))
        ledger.paid[f"telegram:{ALICE['id']}"] = 4  # she spent 6 of the 10

        charge = payment["telegram_payment_charge_id"]
        refused = await fake.send_text(ALICE_CHAT, ALICE, f"/refund {charge}")
        assert "Only the bot's owners" in (await running.text_for(refused)).params["text"]
        assert not fake.refunds

        asked = await fake.send_text(OWNER_CHAT, OWNER, f"/refund {charge}")
        answer = (await running.text_for(asked)).params["text"]
        assert fake.refunds == [{"user_id": ALICE["id"], "telegram_payment_charge_id": charge}]
        assert "4 credits clawed back, 6 already spent" in answer
        assert ledger.paid[f"telegram:{ALICE['id']}"] == 0


async def test_paysupport_and_terms_answer_the_operators_text(tiny_config, queue):
    settings = Settings()
    async with paying_telegram(tiny_config, queue, Ledger(settings)) as running:
        for command, text in (("/paysupport", settings.paysupport), ("/terms", settings.terms)):
            asked = await running.fake.send_text(ALICE_CHAT, ALICE, command)
            assert (await running.text_for(asked)).params["text"] == text


# -- with the real ledger (bot/credits.py) and its admission rule --------------------------------------------------


def credits_config(config, **credits):
    """[credits] on: one free picture a day, two packs, one owner."""
    settings = {"enabled": True, "free_per_day": 1, "owners": [f"telegram:{OWNER['id']}"],
                "packs": [{"id": "small", "credits": 10, "stars": 50}, {"id": "big", "credits": 60, "stars": 250}],
                **credits}
    return config.model_copy(update={"credits": CreditSettings(**settings)})


@contextlib.asynccontextmanager
async def charging_telegram(tiny_config, queue, database, fake=None) -> AsyncIterator[Running]:
    """`claybot run`'s flow (bot/service.py make_flow: CreditsRule + Credits) over ``database``, on the fake server."""
    fake = fake or FakeTelegram(TOKEN)
    if not fake.port:
        await fake.start()
    config = credits_config(with_telegram(tiny_config, fake))
    async with ClaybotDatabase(database) as store:
        front_end = TelegramFrontEnd(config, make_flow(queue, config, store), TOKEN)
        try:
            await asyncio.wait_for(front_end.start(), 15)
            yield Running(fake, front_end)
        finally:
            await asyncio.wait_for(front_end.close(), 30)


async def test_out_of_credits_buy_pay_and_the_next_photo_is_answered(tiny_config, queue, tmp_path):
    async with charging_telegram(tiny_config, queue, tmp_path / "claybot.sqlite3") as running:
        fake = running.fake
        menu = [c["command"] for c in fake.calls_to("setMyCommands")[0].params["commands"]]
        assert {"balance", "buy", "paysupport"} <= set(menu)
        after = len(fake.calls)
        await fake.send_text(ALICE_CHAT, ALICE, "/help")
        shown = await fake.wait_for(lambda c: c.method == "sendMessage" and c.params["chat_id"] == ALICE["id"],
                                    after=after)
        assert "/balance" in shown.params["text"] and "/buy" in shown.params["text"]

        first = await fake.send_photo(ALICE_CHAT, ALICE, LANDSCAPE, caption="/clay")
        await running.picture_for(first)

        second = await fake.send_photo(ALICE_CHAT, ALICE, LANDSCAPE, caption="/clay")
        refusal = await running.text_for(second)
        assert "no credits left" in refusal.params["text"]
        buttons = [b for row in refusal.params["reply_markup"]["inline_keyboard"] for b in row]
        assert [b["callback_data"] for b in buttons] == ["buy|small", "buy|big"]
        assert len(fake.calls_to("download")) == 1  # nothing fetched, nothing queued for the second

        await fake.press(ALICE, refusal.result, "buy|small")
        invoice_call = await fake.wait_for(lambda c: c.method == "sendInvoice", answered=True)
        invoice = fake.invoices[-1]
        assert invoice_call.params["chat_id"] == ALICE["id"] and invoice["currency"] == "XTR"

        query = await fake.pre_checkout(ALICE, invoice)
        assert (await answer_to(running, query))["ok"] is True

        payment = fake.payment(ALICE, invoice)
        await running.text_for(await fake.successful_payment(ALICE_CHAT, ALICE, payment))
        await fake.successful_payment(ALICE_CHAT, ALICE, payment)  # delivered twice
        asked = await fake.send_text(ALICE_CHAT, ALICE, "/balance")
        assert "0 free today, 10 bought" in (await running.text_for(asked)).params["text"]

        third = await fake.send_photo(ALICE_CHAT, ALICE, LANDSCAPE, caption="/clay")
        await running.picture_for(third)
        asked = await fake.send_text(ALICE_CHAT, ALICE, "/balance")
        assert "0 free today, 9 bought" in (await running.text_for(asked)).params["text"]


async def test_with_the_ledger_a_payment_made_while_down_is_credited_once_and_an_owner_refund_claws_back(
        tiny_config, queue, tmp_path):
    database, fake = tmp_path / "claybot.sqlite3", FakeTelegram(TOKEN)
    await fake.start()
    try:
        async with charging_telegram(tiny_config, queue, database, fake) as running:
            invoice = await invoice_for(running, ALICE, ALICE_CHAT, "small")
        payment = fake.payment(ALICE, invoice)  # paid while the bot was down
        for _ in range(2):  # two starts: credited once
            after = len(fake.calls)
            async with charging_telegram(tiny_config, queue, database, fake) as running:
                await fake.wait_for(lambda c: c.method == "getStarTransactions", after=after, answered=True)
                asked = await fake.send_text(ALICE_CHAT, ALICE, "/balance")
                assert "1 free today, 10 bought" in (await running.text_for(asked)).params["text"]

        async with charging_telegram(tiny_config, queue, database, fake) as running:
            photo = await fake.send_photo(ALICE_CHAT, ALICE, LANDSCAPE, caption="/clay")
            await running.picture_for(photo)  # the free one
            photo = await fake.send_photo(ALICE_CHAT, ALICE, LANDSCAPE, caption="/clay")
            await running.picture_for(photo)  # one bought credit spent
            charge = payment["telegram_payment_charge_id"]
            asked = await fake.send_text(OWNER_CHAT, OWNER, f"/refund {charge}")
            answer = (await running.text_for(asked)).params["text"]
            assert fake.refunds == [{"user_id": ALICE["id"], "telegram_payment_charge_id": charge}]
            assert "9 credits clawed back, 1 already spent" in answer
            asked = await fake.send_text(ALICE_CHAT, ALICE, "/balance")
            assert "0 free today, 0 bought" in (await running.text_for(asked)).params["text"]
    finally:
        await fake.close()
