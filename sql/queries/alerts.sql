-- name: create-alert-channel
-- returns: AlertChannel
INSERT INTO alert_channels (tenant_id, kind, name, target, secret_enc, kinds, window_seconds)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING id, tenant_id, kind, name, target, kinds, window_seconds, active, created_at;

-- name: list-alert-channels
-- returns: AlertChannel
-- A tenant's channels ($1 NULL: the admin's, which receive the engine-wide events).
SELECT id, tenant_id, kind, name, target, kinds, window_seconds, active, created_at
FROM alert_channels WHERE tenant_id IS NOT DISTINCT FROM $1 ORDER BY id;

-- name: get-alert-channel-secret
SELECT id, tenant_id, kind, name, target, secret_enc FROM alert_channels
WHERE tenant_id IS NOT DISTINCT FROM $1 AND id = $2;

-- name: delete-alert-channel
DELETE FROM alert_channels WHERE tenant_id IS NOT DISTINCT FROM $1 AND id = $2 RETURNING id;

-- name: undelivered-alert-events
-- The events no channel has been given yet, oldest first; SKIP LOCKED lets several workers route at once.
SELECT id, tenant_id, kind, subject, detail, created_at FROM alert_events
WHERE delivered_at IS NULL
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED;

-- name: alert-event-channels
-- The active channels of an event's tenant (NULL: the admin's) that want its kind.
SELECT id, window_seconds FROM alert_channels
WHERE tenant_id IS NOT DISTINCT FROM $1 AND active AND (kinds = '{}' OR $2 = ANY(kinds))
ORDER BY id;

-- name: alert-window-take
-- One event against its channel's window for (kind, subject): no window, or one that has closed, opens a new
-- window and the event is sent (folded = 0); inside an open window it is folded into the digest (folded > 0).
INSERT INTO alert_windows AS w (channel_id, kind, subject, opened_at, folded) VALUES ($1, $2, $3, $4, 0)
ON CONFLICT (channel_id, kind, subject) DO UPDATE
SET folded = CASE WHEN w.opened_at > $4::timestamptz - make_interval(secs => $5::float8) THEN w.folded + 1 ELSE 0 END,
    opened_at = CASE WHEN w.opened_at > $4::timestamptz - make_interval(secs => $5::float8) THEN w.opened_at ELSE $4 END
RETURNING folded;

-- name: closed-alert-windows
-- Windows that held events back and have closed: each gets its digest, which opens the next window (so a
-- target never gets more than one message per window, the digest included).
WITH closed AS (
    SELECT w.channel_id, w.kind, w.subject, w.folded, c.window_seconds
    FROM alert_windows w
    JOIN alert_channels c ON c.id = w.channel_id
    WHERE w.folded > 0 AND w.opened_at <= $1::timestamptz - make_interval(secs => c.window_seconds)
    FOR UPDATE OF w
)
UPDATE alert_windows w SET opened_at = $1, folded = 0
FROM closed
WHERE w.channel_id = closed.channel_id AND w.kind = closed.kind AND w.subject = closed.subject
RETURNING closed.channel_id, closed.kind, closed.subject, closed.folded, closed.window_seconds;

-- name: queue-alert-delivery
INSERT INTO alert_deliveries (channel_id, event_id, kind, subject, text, status, next_attempt_at, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $7);

-- name: mark-alert-events-routed
UPDATE alert_events SET delivered_at = $2 WHERE id = ANY($1::bigint[]);

-- name: due-alert-deliveries
SELECT d.id, d.text, d.kind, d.subject, d.event_id, d.attempts, c.kind AS channel_kind, c.target, c.secret_enc
FROM alert_deliveries d
JOIN alert_channels c ON c.id = d.channel_id
WHERE d.status = 'pending' AND d.next_attempt_at <= $1 AND c.active
ORDER BY d.id
LIMIT $2
FOR UPDATE OF d SKIP LOCKED;

-- name: alert-delivery-result
UPDATE alert_deliveries
SET status = $2, attempts = attempts + 1, last_response = $3, next_attempt_at = $4,
    sent_at = CASE WHEN $2 = 'sent' THEN $5 ELSE sent_at END
WHERE id = $1;

-- name: list-alert-deliveries
-- returns: AlertDelivery
-- One channel's messages, newest first.
SELECT id, event_id, kind, subject, text, status, attempts, last_response, created_at, sent_at
FROM alert_deliveries WHERE channel_id = $1 ORDER BY id DESC LIMIT $2;

-- name: log-alert-test
INSERT INTO alert_deliveries (channel_id, kind, subject, text, status, attempts, last_response, created_at, sent_at)
VALUES ($1, 'test', $2, $3, $4, 1, $5, $6, CASE WHEN $4 = 'sent' THEN $6::timestamptz END);
