-- name: dashboard-tenants
-- returns: TenantSummary
-- The tenants a caller may see ($1 NULL: all of them) with what the overview shows of each.
SELECT t.id, t.slug, t.name,
       (SELECT count(*) FROM contacts c WHERE c.tenant_id = t.id) AS contacts,
       (SELECT count(*) FROM ips i WHERE i.tenant_id = t.id AND i.status IN ('warming', 'active')) AS ips_sending,
       (SELECT count(*) FROM ips i WHERE i.tenant_id = t.id) AS ips,
       (SELECT count(*) FROM campaigns k WHERE k.tenant_id = t.id AND k.status = 'sending') AS campaigns_sending
FROM tenants t
WHERE $1::bigint IS NULL OR t.id = $1
ORDER BY t.id;

-- name: dashboard-ips
-- returns: IpSummary
-- A tenant's IPs with today's quota (a warming IP's curve value on its day, an active one's cap) and the
-- tokens granted today ($2: the tenant's local date, as the quota ledger counts days).
SELECT i.id, host(i.address) AS address, i.vmta_name, i.status::text AS status, i.status_reason, i.daily_cap,
       coalesce(w.curve, ARRAY[]::integer[]) AS curve, coalesce(w.current_day, 0) AS current_day,
       CASE WHEN i.status = 'warming' AND w.ip_id IS NOT NULL
            THEN w.curve[least(w.current_day, cardinality(w.curve) - 1) + 1]
            ELSE i.daily_cap END AS quota_today,
       coalesce(g.granted, 0) AS used_today
FROM ips i
LEFT JOIN warmup_plans w ON w.ip_id = i.id
LEFT JOIN quota_grants g ON g.scope = 'ip' AND g.scope_id = i.id AND g.day = $2::date
WHERE i.tenant_id = $1
ORDER BY i.id;

-- name: dashboard-ip-days
-- returns: IpDay
-- Per IP and UTC day since $2: messages that left, bounced and were complained about. Walks sends_ip_day.
SELECT s.ip_id, (s.ip_assigned_at AT TIME ZONE 'UTC')::date AS day,
       count(*) FILTER (WHERE s.status IN ('injected', 'delivered', 'bounced', 'deferred')) AS sent,
       count(*) FILTER (WHERE s.status = 'bounced') AS bounced,
       count(*) FILTER (WHERE s.complained_at IS NOT NULL) AS complained
FROM sends s
JOIN ips i ON i.id = s.ip_id AND i.tenant_id = $1
WHERE s.ip_id IS NOT NULL AND s.ip_assigned_at >= $2::timestamptz
GROUP BY 1, 2
ORDER BY 1, 2;

-- name: dashboard-campaign-progress
-- returns: CampaignProgress
-- Send rows by status for a page of a tenant's campaigns (served by sends_campaign_status).
SELECT s.campaign_id, s.status::text AS status, count(*) AS count
FROM sends s
WHERE s.tenant_id = $1 AND s.campaign_id = ANY($2::bigint[])
GROUP BY 1, 2;

-- name: dashboard-imports
-- returns: Import
-- A tenant's latest imports, newest first.
SELECT id, tenant_id, status::text AS status, file_bytes, mapping, defaults, encoding, delimiter, rows_read,
       created, updated, unchanged, rejected, error, created_at, started_at, finished_at
FROM imports
WHERE tenant_id = $1
ORDER BY id DESC
LIMIT $2;

-- name: dashboard-live-key
-- A dashboard session lasts only as long as its key: NULL once the key is revoked.
SELECT tenant_id FROM api_keys WHERE id = $1 AND revoked_at IS NULL;
