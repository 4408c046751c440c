-- What /metrics reads at scrape time (engine.fleet_metrics). Each query is bounded by the size of the fleet
-- (tenants, IPs, domains) or by the campaigns still in view, never by the number of contacts.

-- name: metrics-tenants
SELECT id, name, timezone FROM tenants ORDER BY id;

-- name: metrics-campaigns
-- Campaigns whose figures are exposed: every one not finished, and those finished (or last changed) in the
-- last $1 days, while their deliveries, bounces and complaints still come back. Older ones drop out, which
-- keeps the series bounded; Prometheus keeps their history.
SELECT id, tenant_id, status::text AS status, transport::text AS transport
FROM campaigns
WHERE status IN ('scheduled', 'sending', 'paused')
   OR coalesce(finished_at, updated_at) > now() - make_interval(days => $1::int)
ORDER BY id;

-- name: metrics-sends
-- The send log of those campaigns, counted by what the series are labelled with. The campaign filter walks
-- sends_campaign_status; the contact is joined by primary key for its MX host (the mailbox provider).
SELECT s.tenant_id, s.campaign_id, coalesce(s.vmta, '') AS vmta, c.mx_host, s.status::text AS status,
       coalesce(s.bounce_category, '') AS bounce_category,
       s.injected_at IS NOT NULL AS injected, s.complained_at IS NOT NULL AS complained, count(*) AS n
FROM sends s LEFT JOIN contacts c ON c.id = s.contact_id
WHERE s.campaign_id = ANY($1::bigint[])
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8;

-- name: metrics-ips
-- Every IP not retired, with today's quota as ips-sending-candidates computes it (a warming IP follows its
-- plan, an active one its daily cap) and the tokens the quota ledger granted on the tenant's day (the day
-- each tenant is on, $1 tenant ids / $2 dates, comes from engine.warmup.today_in_timezone).
SELECT i.tenant_id, i.vmta_name, i.status::text AS status, i.ptr_status,
       CASE WHEN i.status = 'warming' AND w.ip_id IS NOT NULL
            THEN w.curve[least(w.current_day, cardinality(w.curve) - 1) + 1]
            ELSE i.daily_cap END AS daily_quota,
       w.current_day AS warmup_day, coalesce(g.granted, 0) AS used_today, i.blocklist_report
FROM ips i
LEFT JOIN warmup_plans w ON w.ip_id = i.id
LEFT JOIN unnest($1::bigint[], $2::date[]) AS d (tenant_id, day) ON d.tenant_id = i.tenant_id
LEFT JOIN quota_grants g ON g.scope = 'ip' AND g.scope_id = i.id AND g.day = d.day
WHERE i.status <> 'retired'
ORDER BY i.id;

-- name: metrics-domains
SELECT tenant_id, name, dns_report, held_reason IS NOT NULL AS held, blocklist_report
FROM domains ORDER BY id;

-- name: metrics-alert-events
SELECT coalesce(tenant_id::text, '') AS tenant, kind, count(*) AS n
FROM alert_events GROUP BY 1, 2;

