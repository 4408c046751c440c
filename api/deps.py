"""Explicit parameter markers shared by every controller."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from litestar.di import NamedDependency
from litestar.openapi.spec import Example
from litestar.params import PathParameter
from redis.asyncio import Redis

from api.auth import Principal
from engine.settings import Settings

Db = NamedDependency[asyncpg.Connection]
Caller = NamedDependency[Principal]
RedisClient = NamedDependency[Redis]
Config = NamedDependency[Settings]

TenantId = Annotated[int, PathParameter(gt=0, le=2**62, description="tenant id", examples=[Example(value=1)])]


def id_param(noun: str) -> object:
    """A positive id in the path, documented by its noun."""
    return Annotated[int, PathParameter(gt=0, le=2**62, description=f"{noun} id", examples=[Example(value=1)])]
