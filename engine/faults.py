"""What a store that is restarting or unreachable raises, and which store it was.

Jobs retry on these instead of failing for good, and the API answers 503 (with Retry-After) instead of 500:
the request or the job is fine, the store will be back.
"""

from __future__ import annotations

import asyncpg
import redis.exceptions

POSTGRES_FAULTS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,                 # connection lost or refused by the server
    asyncpg.InterfaceError,                          # the connection was closed under the query
    asyncpg.exceptions.OperatorInterventionError,    # "terminating connection due to administrator command"
)
REDIS_FAULTS: tuple[type[BaseException], ...] = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# OSError: a refused or reset socket before either client wraps it (connect() to a stopped server).
STORE_FAULTS: tuple[type[BaseException], ...] = (OSError, *POSTGRES_FAULTS, *REDIS_FAULTS)


def unavailable_store(exc: BaseException) -> str | None:
    """"PostgreSQL" or "Redis" when `exc` says that store cannot be reached now, else None."""
    if isinstance(exc, REDIS_FAULTS):
        return "Redis"
    if isinstance(exc, POSTGRES_FAULTS):
        return "PostgreSQL"
    if isinstance(exc, (ConnectionError, TimeoutError)):
        # A bare socket error: the client whose frames it went through names the store.
        tb = exc.__traceback__
        while tb is not None:
            module = tb.tb_frame.f_globals.get("__name__", "")
            if module.startswith("asyncpg"):
                return "PostgreSQL"
            if module.startswith("redis"):
                return "Redis"
            tb = tb.tb_next
    return None
