-- name: create-ip
-- returns: Ip
-- The address and vmta_name are unique across tenants (one PowerMTA serves them all); the caller maps each
-- unique violation back to its field.
INSERT INTO ips (tenant_id, address, hostname, vmta_name, weight, pool, daily_cap, rate_per_minute)
VALUES ($1, $2::inet, $3, $4, $5, $6, $7, $8)
RETURNING id, tenant_id, host(address) AS address, hostname, vmta_name, weight, pool, status::text AS status,
          status_reason, daily_cap, rate_per_minute, status_changed_at, created_at, updated_at;

-- name: list-ips
-- returns: Ip
-- NULL tenant = every tenant (the admin's listing); ips_tenant serves the per-tenant case.
SELECT id, tenant_id, host(address) AS address, hostname, vmta_name, weight, pool, status::text AS status,
       status_reason, daily_cap, rate_per_minute, status_changed_at, created_at, updated_at
FROM ips
WHERE ($1::bigint IS NULL OR tenant_id = $1) AND ($2::ip_status IS NULL OR status = $2::ip_status)
ORDER BY id;

-- name: get-ip
-- returns: Ip
SELECT id, tenant_id, host(address) AS address, hostname, vmta_name, weight, pool, status::text AS status,
       status_reason, daily_cap, rate_per_minute, status_changed_at, created_at, updated_at
FROM ips
WHERE tenant_id = $1 AND id = $2;

-- name: update-ip
-- returns: Ip
-- A NULL argument keeps the column: one statement serves every partial update.
UPDATE ips SET hostname = coalesce($3, hostname),
               vmta_name = coalesce($4, vmta_name),
               weight = coalesce($5, weight),
               pool = coalesce($6, pool),
               daily_cap = coalesce($7, daily_cap),
               rate_per_minute = coalesce($8, rate_per_minute),
               updated_at = now()
WHERE tenant_id = $1 AND id = $2
RETURNING id, tenant_id, host(address) AS address, hostname, vmta_name, weight, pool, status::text AS status,
          status_reason, daily_cap, rate_per_minute, status_changed_at, created_at, updated_at;

-- name: lock-ip-status
-- The current status and the plan's phase under a row lock, so two status changes never interleave.
SELECT i.status::text AS status, w.phase
FROM ips i LEFT JOIN warmup_plans w ON w.ip_id = i.id
WHERE i.tenant_id = $1 AND i.id = $2
FOR UPDATE OF i;

-- name: set-ip-status
-- returns: Ip
UPDATE ips SET status = $3::ip_status, status_reason = $4, status_changed_at = now(), updated_at = now()
WHERE tenant_id = $1 AND id = $2
RETURNING id, tenant_id, host(address) AS address, hostname, vmta_name, weight, pool, status::text AS status,
          status_reason, daily_cap, rate_per_minute, status_changed_at, created_at, updated_at;

-- name: ips-sending-candidates
-- The tenant's IPs that may send, with today's daily quota: a warming IP follows its plan (the curve's value
-- on its current day), an active one its daily cap. The tenant filter is what keeps one tenant's mail off
-- another tenant's IPs.
SELECT i.id AS ip_id, i.vmta_name, i.weight, i.status::text AS status, i.rate_per_minute,
       CASE WHEN i.status = 'warming' AND w.ip_id IS NOT NULL
            THEN w.curve[least(w.current_day, cardinality(w.curve) - 1) + 1]
            ELSE i.daily_cap END AS daily_quota
FROM ips i LEFT JOIN warmup_plans w ON w.ip_id = i.id
WHERE i.tenant_id = $1 AND i.status IN ('warming', 'active')
ORDER BY i.id;

-- name: ips-used-on-day
-- Tokens an IP was granted on a day ($2, the tenant's local date): the quota ledger, written with every grant
-- before injection. This is the truth a lost Redis day counter is rebuilt from.
SELECT coalesce((SELECT granted FROM quota_grants WHERE scope = 'ip' AND scope_id = $1 AND day = $2::date), 0);
