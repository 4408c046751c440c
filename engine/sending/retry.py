"""Retry policy for soft (4xx) failures: how long to wait before attempt N, and when to give up."""

from __future__ import annotations

# Delay before the retry that follows failed attempt N (1-based), in seconds. The shape follows the
# usual MTA practice (PowerMTA's default `retry-after 10m` that widens to hours, reference §3): retry
# quickly once for greylisting (most greylists release after 1-5 minutes), then back off so a throttled
# receiver or a PowerMTA node in trouble is not hammered. Five retries span about 5.3 hours, well under
# PowerMTA's own `bounce-after 4d12h`, so the engine gives up before the MTA would.
RETRY_DELAYS: tuple[float, ...] = (
    60.0,         # 1 minute: greylisting
    5 * 60.0,     # 5 minutes
    15 * 60.0,    # 15 minutes
    60 * 60.0,    # 1 hour
    4 * 60 * 60.0,  # 4 hours
)

# Attempts in all, the first send included: after this many soft failures the send is marked failed.
MAX_ATTEMPTS: int = len(RETRY_DELAYS) + 1


def next_retry_delay(attempt: int) -> float | None:
    """Seconds to wait after soft-failed attempt `attempt` (1-based), or None when it is time to give up."""
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    if attempt >= MAX_ATTEMPTS:
        return None
    return RETRY_DELAYS[attempt - 1]
