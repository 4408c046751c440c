-- name: health-add
-- Final results, hard bounces and complaints of some send rows, per (campaign, IP), added to the figures of
-- the campaign, the IP and the campaign's sending domain (the tenant's domain its From address is at).
-- Campaigns keep one row (bucket -infinity); IPs and domains one per minute. Rows are written in key order
-- so two workers adding at once queue rather than deadlock.
WITH u AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::int[], $5::int[])
             AS u(campaign_id, ip_id, results, hard, complaints)
), scoped AS (
    SELECT 'campaign'::health_scope AS scope, u.campaign_id AS scope_id, sum(u.results) AS results,
           sum(u.hard) AS hard, sum(u.complaints) AS complaints
    FROM u GROUP BY u.campaign_id
    UNION ALL
    SELECT 'ip'::health_scope, u.ip_id, sum(u.results), sum(u.hard), sum(u.complaints)
    FROM u WHERE u.ip_id IS NOT NULL GROUP BY u.ip_id
    UNION ALL
    SELECT 'domain'::health_scope, d.id, sum(u.results), sum(u.hard), sum(u.complaints)
    FROM u
    JOIN campaigns c ON c.id = u.campaign_id
    JOIN domains d ON d.tenant_id = c.tenant_id AND d.name = lower(split_part(c.from_email, '@', 2))
    GROUP BY d.id
)
INSERT INTO health_counts AS h (scope, scope_id, bucket, results, hard, complaints)
SELECT scope, scope_id,
       CASE WHEN scope = 'campaign' THEN '-infinity'::timestamptz ELSE date_trunc('minute', now()) END,
       results, hard, complaints
FROM scoped
ORDER BY scope, scope_id
ON CONFLICT (scope, scope_id, bucket) DO UPDATE
SET results = h.results + EXCLUDED.results, hard = h.hard + EXCLUDED.hard,
    complaints = h.complaints + EXCLUDED.complaints
RETURNING h.scope::text AS scope, h.scope_id;

-- name: health-figures
-- returns: Figures
-- What the checks judge: a campaign's whole run since it was last (re)armed, an IP's or a domain's last
-- 24 hours. The primary key serves each (scope, scope_id) range.
SELECT k.scope, k.scope_id, coalesce(sum(h.results), 0)::bigint AS results, coalesce(sum(h.hard), 0)::bigint AS hard,
       coalesce(sum(h.complaints), 0)::bigint AS complaints
FROM unnest($1::text[], $2::bigint[]) AS k(scope, scope_id)
LEFT JOIN health_counts h ON h.scope = k.scope::health_scope AND h.scope_id = k.scope_id
      AND (k.scope = 'campaign' OR h.bucket > now() - interval '24 hours')
GROUP BY k.scope, k.scope_id;

-- name: health-rearm
-- An operator resumed the target: its check starts again from nothing.
DELETE FROM health_counts WHERE scope = $1::health_scope AND scope_id = $2;

-- name: health-prune
-- Minute rows of IPs and domains older than the window are of no more use.
DELETE FROM health_counts WHERE scope <> 'campaign' AND bucket < now() - interval '25 hours';

-- name: health-pause-ip
-- The IP passed its limits: paused with the figures; only a sending IP moves (its warmup holds meanwhile:
-- the daily run looks at warming IPs only).
UPDATE ips SET status = 'paused', status_reason = $3, status_changed_at = now(), updated_at = now()
WHERE tenant_id = $1 AND id = $2 AND status IN ('warming', 'active')
RETURNING id;

-- name: health-pause-domain
UPDATE domains SET paused_reason = $3, paused_at = now(), updated_at = now()
WHERE tenant_id = $1 AND id = $2 AND paused_reason IS NULL
RETURNING name;

-- name: health-resume-domain
UPDATE domains SET paused_reason = NULL, paused_at = NULL, updated_at = now()
WHERE tenant_id = $1 AND id = $2
RETURNING id;

-- name: health-domain-paused
-- Why the tenant's sending domain of this name is paused (NULL: it is not, or it is no domain of the tenant).
SELECT paused_reason FROM domains WHERE tenant_id = $1 AND name = $2;

-- name: health-domain-state
SELECT id, name, paused_reason, paused_at FROM domains WHERE tenant_id = $1 AND id = $2;

-- name: health-complaints-total
-- Complaints on record for a campaign, an IP or a domain of the tenant, from the send log (never reset).
SELECT count(*) FROM sends s
WHERE s.tenant_id = $1 AND s.complained_at IS NOT NULL
  AND CASE $2::text
        WHEN 'campaign' THEN s.campaign_id = $3
        WHEN 'ip' THEN s.ip_id = $3
        ELSE s.campaign_id IN (SELECT c.id FROM campaigns c JOIN domains d ON d.tenant_id = c.tenant_id
                               AND d.name = lower(split_part(c.from_email, '@', 2))
                               WHERE c.tenant_id = $1 AND d.id = $3)
      END;
