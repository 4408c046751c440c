-- name: warmup-create-plan
-- One plan per IP (ip_id is the key): creating an IP creates its plan in the same transaction.
INSERT INTO warmup_plans (ip_id, tenant_id, curve, target)
VALUES ($1, $2, $3::int[], $4);

-- name: warmup-list-plans
-- returns: WarmupPlan
-- The tenant's plans with what an operator reads next to them: the IP's address, VMTA and status.
SELECT w.ip_id, w.tenant_id, host(i.address) AS address, i.vmta_name, i.status::text AS ip_status, w.curve,
       w.current_day, w.curve[least(w.current_day, cardinality(w.curve) - 1) + 1] AS quota, w.target, w.phase,
       w.last_advanced_on, w.updated_at
FROM warmup_plans w JOIN ips i ON i.id = w.ip_id
WHERE w.tenant_id = $1
ORDER BY w.ip_id;

-- name: warmup-get-plan
-- returns: WarmupPlan
SELECT w.ip_id, w.tenant_id, host(i.address) AS address, i.vmta_name, i.status::text AS ip_status, w.curve,
       w.current_day, w.curve[least(w.current_day, cardinality(w.curve) - 1) + 1] AS quota, w.target, w.phase,
       w.last_advanced_on, w.updated_at
FROM warmup_plans w JOIN ips i ON i.id = w.ip_id
WHERE w.tenant_id = $1 AND w.ip_id = $2;

-- name: warmup-list-events
-- returns: WarmupEvent
SELECT id, ip_id, on_day, action, from_day, to_day, quota, reason, alert, sent, bounced, complained, created_at
FROM warmup_events
WHERE tenant_id = $1 AND ip_id = $2
ORDER BY on_day, id;

-- name: warmup-set-curve
-- A tenant's own curve lives in its settings; IPs created afterwards start on it.
UPDATE tenants SET settings = jsonb_set(settings, '{warmup_curve}', $2::jsonb), updated_at = now()
WHERE id = $1
RETURNING id;

-- name: warmup-tenants
-- Every tenant with its timezone and policy overrides: the cron decides per tenant whether its hour has come.
SELECT id, timezone, settings FROM tenants ORDER BY id;

-- name: warmup-due-ips
-- The IPs the daily run looks at: warming IPs on a warming plan. Paused or blacklisted IPs send nothing,
-- so they keep their step until resumed.
SELECT w.ip_id
FROM warmup_plans w JOIN ips i ON i.id = w.ip_id
WHERE w.tenant_id = $1 AND w.phase = 'warming' AND i.status = 'warming'
  AND (w.last_advanced_on IS NULL OR w.last_advanced_on < $2)
ORDER BY w.ip_id;

-- name: warmup-day-sends
-- Yesterday's figures per IP from the send log: every row stamped with the IP during that local day (its
-- token was taken, it went to PowerMTA), and those that came back bounced. sends_ip_day serves the range.
SELECT s.ip_id, count(*) AS sent, count(*) FILTER (WHERE s.status = 'bounced') AS bounced
FROM sends s
WHERE s.ip_id = ANY($1::bigint[])
  AND s.ip_assigned_at >= ($2::date)::timestamp AT TIME ZONE $3::text
  AND s.ip_assigned_at < ($2::date + 1)::timestamp AT TIME ZONE $3::text
GROUP BY s.ip_id;

-- name: warmup-day-complaints
-- Complaints received during the day, each charged to the IP that last mailed the person before it came in.
-- The send log has no complaint column yet (it lives in 0005, after this noun's migration); the feedback
-- flow records complaints as suppressions, found back to the contact through its dedup hash.
SELECT last.ip_id, count(*) AS complained
FROM suppressions sp
JOIN contacts c ON c.tenant_id = sp.tenant_id AND c.email_hash = sha256(convert_to(sp.value, 'UTF8'))
CROSS JOIN LATERAL (
    SELECT s.ip_id FROM sends s
    WHERE s.contact_id = c.id AND s.tenant_id = sp.tenant_id AND s.ip_id IS NOT NULL
      AND s.ip_assigned_at <= sp.created_at
    ORDER BY s.ip_assigned_at DESC
    LIMIT 1
) last
WHERE sp.tenant_id = $1 AND sp.reason = 'complaint' AND NOT sp.is_domain
  AND sp.created_at >= ($2::date)::timestamp AT TIME ZONE $3::text
  AND sp.created_at < ($2::date + 1)::timestamp AT TIME ZONE $3::text
  AND last.ip_id = ANY($4::bigint[])
GROUP BY last.ip_id;

-- name: warmup-lock-plan
-- The plan under a row lock: two workers running the cron at once queue here, and the second one sees
-- last_advanced_on already set to today.
SELECT w.curve, w.current_day, w.target, w.phase, w.last_advanced_on, i.status::text AS ip_status
FROM warmup_plans w JOIN ips i ON i.id = w.ip_id
WHERE w.tenant_id = $1 AND w.ip_id = $2
FOR UPDATE OF w;

-- name: warmup-record-event
-- One decision per IP per calendar day (UNIQUE (ip_id, on_day)): nothing returned means another run
-- already decided today, and the caller writes nothing more.
INSERT INTO warmup_events (ip_id, tenant_id, on_day, action, from_day, to_day, quota, reason, alert, sent,
                           bounced, complained)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (ip_id, on_day) DO NOTHING
RETURNING id;

-- name: warmup-update-plan
UPDATE warmup_plans SET current_day = $2, phase = $3, last_advanced_on = $4, updated_at = now()
WHERE ip_id = $1;

-- name: warmup-activate-ip
-- The plan reached its target: the IP sends at its daily cap from now on. Only a warming IP moves (one
-- paused in the meantime stays paused, and resumes as active).
UPDATE ips SET status = 'active', status_reason = 'warmup complete', status_changed_at = now(), updated_at = now()
WHERE id = $1 AND status = 'warming';
