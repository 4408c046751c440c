-- name: create-campaign
-- returns: Campaign
INSERT INTO campaigns (tenant_id, name, from_name, from_email, reply_to, category, templates, audience,
                       transport, send_at, send_window, daily_cap)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::campaign_transport, $10, $11, $12)
RETURNING id, tenant_id, name, from_name, from_email, reply_to, category, templates, audience,
          transport::text AS transport, send_at, send_window, daily_cap, status::text AS status,
          audience_ready, recovered_in_flight, stale_results, pause_reason, wait_reason, started_at, finished_at, created_at, updated_at;

-- name: get-campaign
-- returns: Campaign
SELECT id, tenant_id, name, from_name, from_email, reply_to, category, templates, audience,
       transport::text AS transport, send_at, send_window, daily_cap, status::text AS status,
       audience_ready, recovered_in_flight, stale_results, pause_reason, wait_reason, started_at, finished_at, created_at, updated_at
FROM campaigns
WHERE tenant_id = $1 AND id = $2;

-- name: get-campaign-by-id
-- Workers know only the id; the row carries its tenant, which every later query filters on.
-- returns: Campaign
SELECT id, tenant_id, name, from_name, from_email, reply_to, category, templates, audience,
       transport::text AS transport, send_at, send_window, daily_cap, status::text AS status,
       audience_ready, recovered_in_flight, stale_results, pause_reason, wait_reason, started_at, finished_at, created_at, updated_at
FROM campaigns
WHERE id = $1;

-- name: list-campaigns
-- Keyset pagination on id, newest first.
-- returns: Campaign
SELECT id, tenant_id, name, from_name, from_email, reply_to, category, templates, audience,
       transport::text AS transport, send_at, send_window, daily_cap, status::text AS status,
       audience_ready, recovered_in_flight, stale_results, pause_reason, wait_reason, started_at, finished_at, created_at, updated_at
FROM campaigns
WHERE tenant_id = $1 AND ($2::bigint IS NULL OR id < $2) AND ($3::text IS NULL OR status = $3::campaign_status)
ORDER BY id DESC
LIMIT $4;

-- name: update-campaign
-- Only drafts change; the WHERE makes a concurrent start win over an edit.
-- returns: Campaign
UPDATE campaigns SET name = $3, from_name = $4, from_email = $5, reply_to = $6, category = $7, templates = $8,
       audience = $9, transport = $10::campaign_transport, send_at = $11, send_window = $12, daily_cap = $13,
       updated_at = now()
WHERE tenant_id = $1 AND id = $2 AND status = 'draft'
RETURNING id, tenant_id, name, from_name, from_email, reply_to, category, templates, audience,
          transport::text AS transport, send_at, send_window, daily_cap, status::text AS status,
          audience_ready, recovered_in_flight, stale_results, pause_reason, wait_reason, started_at, finished_at, created_at, updated_at;

-- name: delete-campaign
DELETE FROM campaigns WHERE tenant_id = $1 AND id = $2 AND status IN ('draft', 'completed', 'cancelled')
RETURNING id;

-- name: set-campaign-status
-- A transition happens only from the states listed in $4, so two racing callers cannot both win.
UPDATE campaigns
SET status = $3::campaign_status,
    started_at = CASE WHEN $3 IN ('scheduled', 'sending') THEN coalesce(started_at, now()) ELSE started_at END,
    finished_at = CASE WHEN $3 IN ('completed', 'cancelled') THEN now() ELSE finished_at END,
    -- an operator's transition supersedes the reason the engine paused it for
    pause_reason = CASE WHEN $3 = 'paused' THEN pause_reason ELSE NULL END,
    updated_at = now()
WHERE tenant_id = $1 AND id = $2 AND status = ANY($4::campaign_status[])
RETURNING status::text;

-- name: active-campaigns
-- What workers should be sending now: started campaigns whose time has come.
SELECT id, transport::text AS transport FROM campaigns
WHERE status IN ('scheduled', 'sending') AND (send_at IS NULL OR send_at <= now())
ORDER BY id;

-- name: campaign-stats
-- returns: StatusCount
SELECT status::text AS status, count(*)::bigint AS count FROM sends WHERE campaign_id = $1 GROUP BY status;

-- name: campaign-stats-by-ip
-- returns: GroupCount
SELECT coalesce(vmta, '') AS key, status::text AS status, count(*)::bigint AS count
FROM sends WHERE campaign_id = $1 AND vmta IS NOT NULL
GROUP BY vmta, status;

-- name: campaign-stats-by-language
-- returns: GroupCount
SELECT coalesce(language, '') AS key, status::text AS status, count(*)::bigint AS count
FROM sends WHERE campaign_id = $1
GROUP BY language, status;

-- name: list-campaign-sends
-- Keyset pagination over the send log of one campaign.
-- returns: SendRow
SELECT s.id, s.contact_id, c.email, s.status::text AS status, s.attempts, s.language, s.template_id,
       s.template_version, s.vmta, s.smtp_code, s.smtp_status, s.detail, s.message_id, s.injected_at,
       s.finished_at, s.next_attempt_at, s.step::int AS step
FROM sends s LEFT JOIN contacts c ON c.id = s.contact_id AND c.tenant_id = s.tenant_id
WHERE s.campaign_id = $1 AND s.tenant_id = $2 AND s.id > $3
  AND ($4::text IS NULL OR s.status = $4::send_status)
ORDER BY s.id
LIMIT $5;

-- name: audience-fill-page
-- Streams the audience into the send log one keyset page at a time; ON CONFLICT makes a resumed or
-- repeated page harmless. Returns the page's last contact id (the next cursor) and its size.
WITH page AS (
    SELECT c.id, c.language
    FROM contacts c
    WHERE c.tenant_id = $1 AND c.id > $3
      AND c.status::text = ANY($4::text[])
      AND ($5::text[] IS NULL OR c.language = ANY($5))
      AND ($6::text[] IS NULL OR c.category = ANY($6))
      AND ($7::bigint[] IS NULL OR c.data_source_id = ANY($7))
      AND ($8::bigint[] IS NULL OR (
            CASE WHEN $9 = 'all'
                 THEN (SELECT count(*) FROM contact_tags ct WHERE ct.contact_id = c.id AND ct.tag_id = ANY($8)) = cardinality($8)
                 ELSE EXISTS (SELECT 1 FROM contact_tags ct WHERE ct.contact_id = c.id AND ct.tag_id = ANY($8))
            END))
    ORDER BY c.id
    LIMIT $10
), ins AS (
    INSERT INTO sends (tenant_id, campaign_id, contact_id, language)
    SELECT $1, $2, id, language FROM page
    ON CONFLICT (campaign_id, contact_id, step) DO NOTHING
)
SELECT max(id) AS last_id, count(*) AS n FROM page;

-- name: audience-count
-- The same filter as audience-fill-page, counted (the preview before a start).
SELECT count(*) FROM contacts c
WHERE c.tenant_id = $1
  AND c.status::text = ANY($2::text[])
  AND ($3::text[] IS NULL OR c.language = ANY($3))
  AND ($4::text[] IS NULL OR c.category = ANY($4))
  AND ($5::bigint[] IS NULL OR c.data_source_id = ANY($5))
  AND ($6::bigint[] IS NULL OR (
        CASE WHEN $7 = 'all'
             THEN (SELECT count(*) FROM contact_tags ct WHERE ct.contact_id = c.id AND ct.tag_id = ANY($6)) = cardinality($6)
             ELSE EXISTS (SELECT 1 FROM contact_tags ct WHERE ct.contact_id = c.id AND ct.tag_id = ANY($6))
        END));

-- name: audience-advance
UPDATE campaigns SET audience_cursor = $2, audience_ready = $3, updated_at = now() WHERE id = $1;

-- name: audience-tag-ids
-- Tag slugs of the audience resolved once, inside the tenant; unknown slugs simply match nothing.
SELECT id FROM tags WHERE tenant_id = $1 AND slug = ANY($2::text[]);

-- name: cancel-pending-sends
-- A cancelled campaign's rows that never left stay in the log as skipped, so its stats add up.
UPDATE sends SET status = 'skipped', detail = 'campaign cancelled', finished_at = now()
WHERE campaign_id = $1 AND status IN ('queued', 'deferred');

-- name: set-campaign-wait-reason
-- What the campaign waits for (NULL: nothing); a write only when it changes, since every batch asks.
UPDATE campaigns SET wait_reason = $2 WHERE id = $1 AND wait_reason IS DISTINCT FROM $2;
