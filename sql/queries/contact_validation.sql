-- name: plan-per-batch
-- Plan each batch's statements for its own id list (for the rest of the transaction). After five runs of a
-- prepared statement PostgreSQL may switch to a generic plan, which cannot see that `id = ANY($2)` names a
-- few thousand rows: it then scans every pending contact of the tenant per batch, so a backlog of 40,000
-- pending contacts took 8 s per batch of 2,000 instead of 0.09 s. Planning costs well under a millisecond.
SET LOCAL plan_cache_mode = force_custom_plan;

-- name: validation-policy
-- The tenant's transport (MailWizz tenants get an outbox row per valid contact) and its policy knobs.
SELECT transport::text AS transport, settings FROM tenants WHERE id = $1;

-- name: contacts-to-validate
-- Only contacts still pending: an operator's status set meanwhile is never overwritten by the job.
-- Each id is probed through the primary key (the LIMIT keeps the planner from flattening the lateral join):
-- planned on its own, the tenant's pending contacts were read through contacts_tenant_status, whose
-- entries for contacts validated since stay until a vacuum, so a batch read every contact validated before
-- it (39 ms of index walk at 200,000 contacts for 2,500 pending rows).
SELECT c.id, c.email, c.validation_tries
FROM (SELECT DISTINCT unnest($2::bigint[]) AS id) wanted
CROSS JOIN LATERAL (
    SELECT id, email, validation_tries, tenant_id, status FROM contacts WHERE id = wanted.id LIMIT 1
) c
WHERE c.tenant_id = $1 AND c.status = 'pending' AND c.email IS NOT NULL
ORDER BY c.id;

-- name: apply-verdicts
-- Every verdict of a batch in one statement, with its event and, for MailWizz tenants, the outbox row of
-- each contact that became valid. A `pending` verdict (DNS outage) keeps the status and counts the try.
-- The verdicts come as one JSON array of objects ($2, text), as the contacts do in upsert-contacts.
WITH v AS (
    SELECT * FROM jsonb_to_recordset($2::text::jsonb)
        AS v(id bigint, status text, score real, reasons text[], suggestion text, mx_host text)
),
done AS (
    UPDATE contacts c SET
        status = v.status::contact_status,
        score = CASE WHEN v.status = 'pending' THEN c.score ELSE v.score END,
        reasons = coalesce(v.reasons, '{}'),
        suggestion = v.suggestion,
        mx_host = coalesce(v.mx_host, c.mx_host),
        validated_at = CASE WHEN v.status = 'pending' THEN c.validated_at ELSE now() END,
        validation_tries = CASE WHEN v.status = 'pending' THEN c.validation_tries + 1 ELSE 0 END,
        updated_at = now()
    FROM v
    WHERE c.tenant_id = $1 AND c.id = v.id AND c.status = 'pending'
    RETURNING c.id, c.status::text AS status, c.validation_tries
),
events AS (
    INSERT INTO contact_events (contact_id, tenant_id, kind, detail)
    SELECT d.id, $1, CASE WHEN d.status = 'pending' THEN 'validation_deferred' ELSE 'validated' END,
           jsonb_build_object('status', d.status, 'score', v.score, 'reasons', array_to_string(v.reasons, ','),
                              'by', $4::text)
    FROM done d JOIN v ON v.id = d.id
),
outbox AS (
    INSERT INTO mailwizz_outbox (contact_id, tenant_id)
    SELECT d.id, $1 FROM done d WHERE d.status = 'valid' AND $3::boolean
    ON CONFLICT (contact_id) DO NOTHING
)
SELECT id, status, validation_tries FROM done ORDER BY id;

-- name: stale-pending-contacts
-- Pending contacts no job is about to validate: unchanged for longer than the delay their try count calls
-- for ($1 indexed by tries + 1; past its end, $2) plus a grace ($3). Oldest change first, at most $4.
SELECT tenant_id, id FROM contacts
WHERE status = 'pending' AND email IS NOT NULL
  AND updated_at < now() - make_interval(secs => coalesce(($1::int[])[validation_tries + 1], $2) + $3)
ORDER BY updated_at
LIMIT $4;
