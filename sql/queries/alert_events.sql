-- name: create-alert-event
-- returns: AlertEvent
INSERT INTO alert_events (tenant_id, kind, subject, detail) VALUES ($1, $2, $3, $4)
RETURNING id, tenant_id, kind, subject, detail, created_at, delivered_at;

-- name: list-alert-events
-- returns: AlertEvent
-- A tenant's events newest first ($1 NULL: every tenant's, the engine-wide ones included).
SELECT id, tenant_id, kind, subject, detail, created_at, delivered_at
FROM alert_events
WHERE ($1::bigint IS NULL OR tenant_id = $1)
ORDER BY id DESC
LIMIT $2;
