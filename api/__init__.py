"""The HTTP API: a Litestar application over the engine."""
