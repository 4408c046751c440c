"""`GET /metrics`: the engine in Prometheus' text format (admin key: the figures span every tenant)."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State

from api.deps import Caller, Config
from engine import metrics
from engine.fleet_metrics import FleetMetrics

# Prometheus' text format; the charset is added by the framework, as for every text answer.
EXPOSITION_TYPE = metrics.CONTENT_TYPE.split("; charset")[0]


def _fleet(state: State, settings: Config) -> FleetMetrics:
    fleet = state.get("fleet_metrics")
    if fleet is None:
        fleet = state.fleet_metrics = FleetMetrics(state.pool, state.redis, queue_name=settings.queue_name,
                                                   worker_timeout=settings.worker_timeout)
    return fleet


@get("/metrics", operation_id="getMetrics", summary="Prometheus metrics", tags=["probes"], security=[{"bearer": []}],
     media_type=EXPOSITION_TYPE,
     description="The send log's counts (injected, delivered, bounced by class, complained, failed, skipped "
                 "per tenant, campaign, VMTA and mailbox provider), quotas and warmup per IP, campaign "
                 "progress, queue depth, DNS and blocklist status - read from the stores at most every two "
                 "seconds (or ten times as long as a reading takes) - and this process's own instruments. The metric names and labels are listed in the "
                 "README. Needs the admin key (Prometheus: `authorization: {credentials_file: ...}`).")
async def get_metrics(caller: Caller, settings: Config, state: State) -> Response[bytes]:
    caller.require_admin()
    body = await _fleet(state, settings).exposition() + metrics.exposition()
    return Response(body, media_type=EXPOSITION_TYPE)


ROUTES = [get_metrics]
