-- name: backoff-lock
-- One IP's standing with one provider, locked while its deferrals are counted (two workers counting at
-- once queue here; a row created meanwhile is handled by backoff-save's ON CONFLICT).
SELECT run, run_started_at, held_until, hold_seconds, holds
FROM provider_holds
WHERE tenant_id = $1 AND ip_id = $2 AND provider = $3
FOR UPDATE;

-- name: backoff-save
-- returns: ProviderHold
WITH saved AS (
    INSERT INTO provider_holds AS p (ip_id, provider, tenant_id, run, run_started_at, last_reply, held_until,
                                     hold_seconds, holds, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
    ON CONFLICT (ip_id, provider) DO UPDATE
    SET run = EXCLUDED.run, run_started_at = EXCLUDED.run_started_at, last_reply = EXCLUDED.last_reply,
        held_until = EXCLUDED.held_until, hold_seconds = EXCLUDED.hold_seconds, holds = EXCLUDED.holds,
        updated_at = now()
    WHERE p.tenant_id = EXCLUDED.tenant_id
    RETURNING *
)
SELECT s.ip_id, i.vmta_name, s.provider, s.run, s.last_reply, s.held_until, s.hold_seconds, s.holds,
       coalesce(s.held_until > now(), false) AS active, s.updated_at
FROM saved s JOIN ips i ON i.id = s.ip_id;

-- name: backoff-held
-- The tenant's holds in force: the grant leaves these IPs out for these providers.
SELECT ip_id, provider, held_until FROM provider_holds WHERE tenant_id = $1 AND held_until > now();

-- name: backoff-list
-- returns: ProviderHold
-- Every IP x provider the tenant's deferrals were counted for ($2: one IP), holds in force first.
SELECT p.ip_id, i.vmta_name, p.provider, p.run, p.last_reply, p.held_until, p.hold_seconds, p.holds,
       coalesce(p.held_until > now(), false) AS active, p.updated_at
FROM provider_holds p JOIN ips i ON i.id = p.ip_id AND i.tenant_id = p.tenant_id
WHERE p.tenant_id = $1 AND ($2::bigint IS NULL OR p.ip_id = $2)
ORDER BY coalesce(p.held_until > now(), false) DESC, p.ip_id, p.provider;
