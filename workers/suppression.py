"""Suppression jobs: repeat an engine unsubscribe in the tenant's MailWizz installs."""

from __future__ import annotations

import asyncio
import logging

from arq import Retry

from engine import secrets
from engine.mailwizz.client import MailWizzClient
from engine.mailwizz.wire import MailWizzNotFound, MailWizzUnavailable
from sql import q

log = logging.getLogger(__name__)

PROPAGATE_JOB = "propagate_unsubscribe"
# The client already retries a few times within a call; these are the slower rounds after it gave up.
# Gmail and Yahoo want unsubscribes honoured within 48 hours (reference §1.1): 12 rounds, 5 min apart at
# first and 1 h at most, cover about half a day.
RETRY_ROUNDS = 12


def retry_delay(job_try: int) -> int:
    return min(300 * job_try, 3600)


async def propagate_unsubscribe(ctx: dict, tenant_id: int, *emails: str) -> dict:
    """Unsubscribe these addresses from every list of every active MailWizz install of the tenant."""
    async with ctx["pool"].acquire() as db:
        instances = await db.fetch(q("suppression-mailwizz-instances"), tenant_id)
    done = missing = 0
    for row in instances:
        if row["public_key_enc"] is None:
            log.warning("tenant %s: MailWizz install %s has no API key; unsubscribes not propagated",
                        tenant_id, row["id"])
            continue
        public = secrets.decrypt(ctx["secret_key"], row["public_key_enc"])
        private = None if row["private_key_enc"] is None else secrets.decrypt(ctx["secret_key"], row["private_key_enc"])
        try:
            client = MailWizzClient(row["base_url"], public, private, api_version=row["api_version"])
        except ValueError as exc:   # a 1.x install stored without its private key
            log.warning("tenant %s: MailWizz install %s unusable: %s", tenant_id, row["id"], exc)
            continue
        async with client:
            outcomes = await asyncio.gather(*(_unsubscribe(client, e) for e in emails), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, MailWizzUnavailable):
                if ctx.get("job_try", 1) < RETRY_ROUNDS:
                    # every address again next round: unsubscribing twice is harmless in MailWizz
                    raise Retry(defer=retry_delay(ctx.get("job_try", 1)))
                log.error("tenant %s: MailWizz install %s unreachable; unsubscribes not propagated", tenant_id,
                          row["id"])
                break
            if isinstance(outcome, BaseException):
                raise outcome
        done += sum(1 for o in outcomes if o is True)
        missing += sum(1 for o in outcomes if o is False)
    return {"instances": len(instances), "unsubscribed": done, "not_in_mailwizz": missing}


async def _unsubscribe(client: MailWizzClient, email: str) -> bool:
    """True once unsubscribed, False when MailWizz never had the address (nothing to do)."""
    try:
        await client.unsubscribe_everywhere(email)
    except MailWizzNotFound:
        return False
    return True


FUNCTIONS = [propagate_unsubscribe]
