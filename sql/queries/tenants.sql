-- name: create-tenant
-- returns: Tenant
INSERT INTO tenants (slug, name, timezone, transport)
VALUES ($1, $2, $3, $4)
RETURNING id, slug, name, timezone, transport::text AS transport, created_at;

-- name: list-tenants
-- returns: Tenant
SELECT id, slug, name, timezone, transport::text AS transport, created_at
FROM tenants
ORDER BY id;

-- name: get-tenant
-- returns: Tenant
SELECT id, slug, name, timezone, transport::text AS transport, created_at
FROM tenants
WHERE id = $1;

-- name: get-tenant-settings
-- Per-tenant policy overrides as stored; engine modules merge them over their defaults.
SELECT settings FROM tenants WHERE id = $1;

-- name: merge-tenant-settings
-- Some policy knobs changed: merged over the stored ones (a JSON null removes a knob: back to the default).
UPDATE tenants SET settings = jsonb_strip_nulls(settings || $2::jsonb), updated_at = now()
WHERE id = $1
RETURNING settings;

-- name: create-api-key
-- returns: ApiKey
INSERT INTO api_keys (tenant_id, name, prefix, key_hash)
VALUES ($1, $2, $3, $4)
RETURNING id, tenant_id, name, prefix, created_at, last_used_at, revoked_at;

-- name: list-api-keys
-- returns: ApiKey
SELECT id, tenant_id, name, prefix, created_at, last_used_at, revoked_at
FROM api_keys
WHERE tenant_id = $1
ORDER BY id;

-- name: revoke-api-key
-- Revoked keys stay listed (with revoked_at) so an audit can tell which key did what.
UPDATE api_keys SET revoked_at = now()
WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL
RETURNING id;

-- name: authenticate-api-key
-- The only lookup on the request path: by the unique hash, live keys only.
SELECT id, tenant_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL;

-- name: touch-api-key
-- last_used_at is written at most once a minute per key to keep the hot path read-only.
UPDATE api_keys SET last_used_at = now()
WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute');
