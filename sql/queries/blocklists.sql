-- name: blocklist-domains
-- Every sending domain of the tenant ($1 NULL: all tenants), looked up on the domain blocklists.
SELECT id, tenant_id, name FROM domains
WHERE ($1::bigint IS NULL OR tenant_id = $1)
ORDER BY id;

-- name: blocklist-store-ip
UPDATE ips SET blocklist_report = $3, blocklist_checked_at = now() WHERE tenant_id = $1 AND id = $2;

-- name: blocklist-store-domain
UPDATE domains SET blocklist_report = $3, blocklist_checked_at = now() WHERE tenant_id = $1 AND id = $2;

-- name: blocklist-hold-domain
-- Hold a listed domain; an existing hold is kept as it was (its first reason, its time), so a listing
-- raises one alert, not one per check cycle.
UPDATE domains SET held_reason = $3, held_at = now(), updated_at = now()
WHERE tenant_id = $1 AND id = $2 AND held_reason IS NULL
RETURNING id;

-- name: release-domain-hold
UPDATE domains SET held_reason = NULL, held_at = NULL, updated_at = now()
WHERE tenant_id = $1 AND id = $2
RETURNING id;
