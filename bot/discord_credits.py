"""Credits on Discord: premium buttons for the packs that have a SKU, and entitlements turned into credits.

Discord's rules (see the README's "Credits"): a consumable SKU cannot be bought again until the app consumes its
entitlement; ENTITLEMENT_CREATE has arrived twice, and one-time purchases have been missing from interaction payloads.
So a purchase is credited once per entitlement id (the ledger's unique payment id), consumed after it is credited, and
at every start the unconsumed entitlements of our packs' SKUs are credited (once) and consumed: a purchase made while
the bot was down, or whose consume failed, is settled then.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import discord

from bot import credits as ledger

if TYPE_CHECKING:
    from bot.config import PackSettings
    from bot.credits import Balance, Credits

logger = logging.getLogger(__name__)


def premium_view(offer: Sequence[PackSettings]) -> discord.ui.View | None:
    """One premium button (Discord's own purchase button, showing the SKU's name and price) per pack with a SKU;
    None when no pack has one."""
    skus = [int(pack.discord_sku) for pack in offer if pack.discord_sku]
    if not skus:
        return None
    view = discord.ui.View(timeout=None)
    for sku in skus[:25]:  # a message holds at most 25 buttons
        view.add_item(discord.ui.Button(sku_id=sku))
    return view


def account_of(user_id: int) -> str:
    """A Discord user's credits account."""
    return ledger.account_of("discord", str(user_id))


def balance_line(balance: Balance) -> str:
    """A person's balance, as /balance says it."""
    return (f"You have {balance.total} credit{'s' if balance.total != 1 else ''}: {balance.free} free today and "
            f"{balance.paid} bought.")


class Entitlements:
    """Turns Discord entitlements of our packs' SKUs into credits, once each, and consumes them."""

    def __init__(self, client: discord.Client, credits: Credits) -> None:
        self.client, self.credits = client, credits

    def packs_by_sku(self) -> dict[int, PackSettings]:
        return {int(pack.discord_sku): pack for pack in self.credits.settings.packs if pack.discord_sku}

    async def settle(self, entitlement: discord.Entitlement) -> bool:
        """Credit one entitlement (a no-op when its id was credited before) and consume it; whether it was ours.
        A consume that fails is logged: the entitlement stays unconsumed and is settled again at the next start."""
        pack = self.packs_by_sku().get(entitlement.sku_id)
        if pack is None:
            logger.info("discord: entitlement %s is for SKU %s, which no pack sells; left alone", entitlement.id,
                        entitlement.sku_id)
            return False
        if entitlement.user_id is None:
            logger.warning("discord: entitlement %s of SKU %s belongs to a server, not a person: not credited "
                           "(make the pack's SKU a consumable bought by users)", entitlement.id, entitlement.sku_id)
            return False
        purchase = await self.credits.purchase(
            str(entitlement.id), account_of(entitlement.user_id), pack.id,
            platform_data={"sku_id": str(entitlement.sku_id), "type": entitlement.type.name})
        if purchase.new:
            logger.info("discord: entitlement %s: user %s bought pack %s (%d credits)", entitlement.id,
                        entitlement.user_id, pack.id, pack.credits)
        if not entitlement.consumed:
            try:
                await entitlement.consume()
            except discord.HTTPException as err:
                logger.warning("discord: could not consume entitlement %s (%s); it is credited, and consumed at the "
                               "next start", entitlement.id, err)
        return True

    async def reconcile(self) -> int:
        """At start: settle every unconsumed entitlement of our packs' SKUs; how many were ours."""
        skus = list(self.packs_by_sku())
        if not skus:
            return 0
        settled = 0
        try:
            async for entitlement in self.client.entitlements(
                    limit=None, skus=[discord.Object(sku) for sku in skus], exclude_ended=True):
                if entitlement.consumed:
                    continue
                try:
                    if await self.settle(entitlement):
                        settled += 1
                except Exception:  # one entitlement the ledger cannot take must not keep the bot from starting
                    logger.exception("discord: could not credit entitlement %s; trying again at the next start",
                                     entitlement.id)
        except discord.HTTPException as err:
            logger.warning("discord: could not list the entitlements (%s); purchases made while the bot was down "
                           "are credited at the next start", err)
        if settled:
            logger.info("discord: settled %d unconsumed entitlement(s) at start", settled)
        return settled
