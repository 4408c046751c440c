"""Domain errors. The API maps each to one HTTP status in a single place (api/errors.py)."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""

    def __init__(self, message: str, *, field: str | None = None, extra: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra or {}


class NotFound(EngineError):
    """The thing does not exist, or belongs to another tenant (never say which)."""


class Conflict(EngineError):
    """The request clashes with the current state (a duplicate name, a campaign no longer a draft)."""


class Invalid(EngineError):
    """Input that parses but breaks a rule; `field` names the culprit."""


class Unprocessable(EngineError):
    """Well-formed input that cannot be acted on (a template that fails to render)."""


class Unauthorized(EngineError):
    """No credentials, or credentials that match nothing."""


class Forbidden(EngineError):
    """Valid credentials that may not do this (a tenant key on an admin operation)."""


class TooLarge(EngineError):
    """More items or bytes than one request may carry."""


class Unavailable(EngineError):
    """A store or upstream the request needs is not reachable right now."""
