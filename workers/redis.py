"""arq's RedisSettings from a redis:// or unix:// URL."""

from __future__ import annotations

from arq.connections import RedisSettings


def redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    # A store restarting must not kill a worker: keep retrying the connection for half a minute.
    settings.conn_retries = 30
    settings.conn_retry_delay = 1
    return settings
