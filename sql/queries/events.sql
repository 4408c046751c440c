-- name: emit-events
-- Events are stored only for tenants with an active endpoint that wants their type (no endpoint: nothing to
-- keep), and queued for each such endpoint in the same statement, so the caller's transaction holds both.
WITH wanted AS (
    SELECT u.ord, u.tenant_id, u.type, u.contact_id, u.data
    FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::jsonb[]) WITH ORDINALITY
         AS u(tenant_id, type, contact_id, data, ord)
    WHERE EXISTS (SELECT 1 FROM event_endpoints e
                  WHERE e.tenant_id = u.tenant_id AND e.active AND u.type = ANY(e.event_types))
    ORDER BY u.ord
), stored AS (
    INSERT INTO event_outbox (tenant_id, type, contact_id, data)
    SELECT tenant_id, type, contact_id, data FROM wanted ORDER BY ord
    RETURNING id, tenant_id, type
)
INSERT INTO event_deliveries (endpoint_id, event_id)
SELECT e.id, s.id
FROM stored s
JOIN event_endpoints e ON e.tenant_id = s.tenant_id AND e.active AND s.type = ANY(e.event_types)
RETURNING event_id;

-- name: create-event-endpoint
-- returns: EventEndpoint
INSERT INTO event_endpoints (tenant_id, url, secret_enc, event_types) VALUES ($1, $2, $3, $4)
RETURNING id, tenant_id, url, event_types, active, disabled_reason, failing_since, attempts, next_attempt_at,
          last_attempt_at, last_status, last_response, created_at;

-- name: list-event-endpoints
-- returns: EventEndpoint
SELECT id, tenant_id, url, event_types, active, disabled_reason, failing_since, attempts, next_attempt_at,
       last_attempt_at, last_status, last_response, created_at
FROM event_endpoints WHERE tenant_id = $1 ORDER BY id;

-- name: get-event-endpoint
-- returns: EventEndpoint
SELECT id, tenant_id, url, event_types, active, disabled_reason, failing_since, attempts, next_attempt_at,
       last_attempt_at, last_status, last_response, created_at
FROM event_endpoints WHERE tenant_id = $1 AND id = $2;

-- name: update-event-endpoint
-- returns: EventEndpoint
-- Turning an endpoint back on starts a fresh run: its backlog is delivered from the oldest event on.
UPDATE event_endpoints
SET event_types = coalesce($3, event_types), active = coalesce($4, active),
    disabled_reason = CASE WHEN coalesce($4, active) THEN NULL ELSE disabled_reason END,
    failing_since = CASE WHEN $4 AND NOT active THEN NULL ELSE failing_since END,
    attempts = CASE WHEN $4 AND NOT active THEN 0 ELSE attempts END,
    next_attempt_at = CASE WHEN $4 AND NOT active THEN now() ELSE next_attempt_at END
WHERE tenant_id = $1 AND id = $2
RETURNING id, tenant_id, url, event_types, active, disabled_reason, failing_since, attempts, next_attempt_at,
          last_attempt_at, last_status, last_response, created_at;

-- name: delete-event-endpoint
DELETE FROM event_endpoints WHERE tenant_id = $1 AND id = $2 RETURNING id;

-- name: due-event-endpoints
-- Active endpoints with something pending whose next attempt is due. SKIP LOCKED: several workers share the
-- endpoints, and each endpoint is delivered to by one worker at a time (in order).
SELECT e.id, e.tenant_id, e.url, e.secret_enc, e.failing_since, e.attempts
FROM event_endpoints e
WHERE e.active AND e.next_attempt_at <= $1
  AND EXISTS (SELECT 1 FROM event_deliveries d WHERE d.endpoint_id = e.id AND d.status = 'pending')
ORDER BY e.next_attempt_at
LIMIT $2
FOR UPDATE SKIP LOCKED;

-- name: pending-events
-- The oldest pending events of one endpoint: the next request's batch, in the order they happened.
SELECT o.id, o.type, o.contact_id, o.data, o.created_at
FROM event_deliveries d
JOIN event_outbox o ON o.id = d.event_id
WHERE d.endpoint_id = $1 AND d.status = 'pending'
ORDER BY d.event_id
LIMIT $2;

-- name: mark-events-delivered
UPDATE event_deliveries
SET status = 'delivered', attempts = attempts + 1, last_status = $3, last_response = $4, delivered_at = $5
WHERE endpoint_id = $1 AND event_id = ANY($2::bigint[]);

-- name: mark-events-attempted
UPDATE event_deliveries
SET attempts = attempts + 1, last_status = $3, last_response = $4
WHERE endpoint_id = $1 AND event_id = ANY($2::bigint[]);

-- name: event-endpoint-succeeded
UPDATE event_endpoints
SET failing_since = NULL, attempts = 0, next_attempt_at = $2, last_attempt_at = $2, last_status = $3,
    last_response = $4
WHERE id = $1;

-- name: event-endpoint-failed
-- $6: the endpoint failed for too long and is turned off, with the reason.
UPDATE event_endpoints
SET failing_since = coalesce(failing_since, $2), attempts = attempts + 1, next_attempt_at = $5,
    last_attempt_at = $2, last_status = $3, last_response = $4,
    active = ($6::text IS NULL), disabled_reason = $6
WHERE id = $1;

-- name: list-event-deliveries
-- returns: EventDelivery
-- One endpoint's delivery log, newest first ($3: before this event id).
SELECT d.event_id, o.type, o.contact_id, d.status, d.attempts, d.last_status, d.last_response, o.created_at,
       d.delivered_at
FROM event_deliveries d
JOIN event_outbox o ON o.id = d.event_id
WHERE d.endpoint_id = $1 AND ($2::bigint IS NULL OR d.event_id < $2)
ORDER BY d.event_id DESC
LIMIT $3;

-- name: wanted-event-types
-- The (tenant, event type) pairs some active endpoint wants: a caller with many facts builds only those events.
SELECT DISTINCT tenant_id, unnest(event_types) AS type
FROM event_endpoints
WHERE active AND tenant_id = ANY($1::bigint[]);
