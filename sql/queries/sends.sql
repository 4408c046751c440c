-- name: claim-sends
-- Takes the next rows of one campaign for this worker. SKIP LOCKED lets any number of workers share a
-- campaign without waiting on each other; the claim is visible to recovery through claimed_by.
-- The contact's fields come back in the same round trip.
-- returns: Claimed
WITH picked AS (
    SELECT id FROM sends
    WHERE campaign_id = $1
      AND (status = 'queued' OR (status = 'deferred' AND next_attempt_at <= now()))
    ORDER BY id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE sends s
SET status = 'claimed', claimed_by = $2, claimed_at = now()
FROM picked, contacts c
WHERE s.id = picked.id AND c.id = s.contact_id AND c.tenant_id = s.tenant_id
RETURNING s.id, s.contact_id, s.attempts, c.email, c.first_name, c.last_name, c.company, c.website, c.country,
          c.language, c.category, c.custom, c.mx_host, c.status::text AS contact_status;

-- name: record-and-mark
-- One statement, one commit: the SMTP results of the chunk just sent ($1..$7; also skipped and failed rows)
-- and the 'sending' mark of the chunk about to be handed to SMTP ($8..$14, rows this worker ($15) holds).
-- From the mark on a crash leaves a row ambiguous; recording the previous chunk in the same commit keeps
-- the ambiguous rows to one chunk. ip_assigned_at is what rebuilds a day's per-IP quota counter if Redis
-- loses it. Either half may be empty.
WITH recorded AS (
    UPDATE sends s
    SET status = u.status::send_status,
        attempts = s.attempts + u.attempted,
        smtp_code = u.code,
        smtp_status = u.enhanced,
        detail = u.detail,
        next_attempt_at = u.next_attempt_at,
        injected_at = CASE WHEN u.status = 'injected' THEN now() ELSE s.injected_at END,
        finished_at = CASE WHEN u.status IN ('injected', 'failed', 'skipped') THEN now() ELSE NULL END,
        claimed_by = NULL
    FROM unnest($1::bigint[], $2::text[], $3::int[], $4::int[], $5::text[], $6::text[], $7::timestamptz[])
         AS u(id, status, attempted, code, enhanced, detail, next_attempt_at)
    WHERE s.id = u.id
    RETURNING s.id
), marked AS (
    UPDATE sends s
    SET status = 'sending', ip_id = u.ip_id, vmta = u.vmta, ip_assigned_at = now(),
        template_id = u.template_id, template_version = u.template_version, message_id = u.message_id,
        language = u.language
    FROM unnest($8::bigint[], $9::bigint[], $10::text[], $11::bigint[], $12::int[], $13::text[], $14::text[])
         AS u(id, ip_id, vmta, template_id, template_version, message_id, language)
    WHERE s.id = u.id AND s.claimed_by = $15
    RETURNING s.id
)
SELECT (SELECT count(*) FROM recorded) AS recorded, (SELECT count(*) FROM marked) AS marked;

-- name: release-claims
-- Rows claimed but never handed to SMTP (paused, no quota left): back to the queue, untouched.
UPDATE sends SET status = 'queued', claimed_by = NULL, claimed_at = NULL
WHERE id = ANY($1::bigint[]) AND status = 'claimed';

-- name: recover-orphans
-- Rows held by workers that are no longer alive. 'claimed' rows were never handed to SMTP and go back
-- safely; 'sending' rows were in flight when their worker died: they go back too (no contact is lost) and
-- are counted, because PowerMTA may already have accepted them.
WITH held AS (
    SELECT id, status FROM sends
    WHERE campaign_id = $1 AND status IN ('claimed', 'sending') AND NOT (claimed_by = ANY($2::text[]))
    FOR UPDATE SKIP LOCKED
), orphans AS (
    UPDATE sends s SET status = 'queued', claimed_by = NULL, claimed_at = NULL
    FROM held WHERE s.id = held.id
    RETURNING (held.status = 'sending') AS in_flight
), counted AS (
    SELECT count(*) FILTER (WHERE in_flight) AS in_flight, count(*) AS total FROM orphans
), bump AS (
    UPDATE campaigns SET recovered_in_flight = recovered_in_flight + (SELECT in_flight FROM counted)
    WHERE id = $1 AND (SELECT in_flight FROM counted) > 0
)
SELECT total, in_flight FROM counted;

-- name: campaign-progress
-- What is left of a campaign: rows still moving, rows waiting for a retry, and when the next retry is due.
SELECT count(*) FILTER (WHERE status IN ('queued', 'claimed', 'sending')) AS active,
       count(*) FILTER (WHERE status = 'deferred') AS deferred,
       min(next_attempt_at) FILTER (WHERE status = 'deferred') AS next_retry
FROM sends WHERE campaign_id = $1 AND status IN ('queued', 'claimed', 'sending', 'deferred');

-- name: complete-campaign
UPDATE campaigns SET status = 'completed', finished_at = now(), updated_at = now()
WHERE id = $1 AND status = 'sending' AND audience_ready
  AND NOT EXISTS (SELECT 1 FROM sends WHERE campaign_id = $1 AND status IN ('queued', 'claimed', 'sending', 'deferred'))
RETURNING id;

-- name: begin-sending
-- A scheduled campaign whose time has come starts sending.
UPDATE campaigns SET status = 'sending', updated_at = now()
WHERE id = $1 AND status = 'scheduled' AND (send_at IS NULL OR send_at <= now())
RETURNING id;

-- name: injected-since
-- Messages of a campaign that took a quota token since a moment (its daily cap counts these).
SELECT count(*) FROM sends WHERE campaign_id = $1 AND ip_assigned_at >= $2;

-- name: campaign-run-state
-- What a sending loop re-reads before every batch: the status (pause/cancel take effect here) and the zone
-- its days are counted in.
SELECT c.status::text AS status, c.tenant_id, t.timezone
FROM campaigns c JOIN tenants t ON t.id = c.tenant_id
WHERE c.id = $1;

-- name: audience-cursor
SELECT audience_cursor FROM campaigns WHERE id = $1;
