-- name: create-data-source
-- returns: DataSource
INSERT INTO data_sources (tenant_id, kind, name, secret_enc, field_mapping)
VALUES ($1, $2::data_source_kind, $3, $4, $5)
RETURNING id, tenant_id, kind::text AS kind, name, field_mapping, active, secret_enc IS NOT NULL AS has_secret,
          created_at;

-- name: list-data-sources
-- returns: DataSource
SELECT id, tenant_id, kind::text AS kind, name, field_mapping, active, secret_enc IS NOT NULL AS has_secret,
       created_at
FROM data_sources WHERE tenant_id = $1 ORDER BY id;

-- name: set-data-source-secret
UPDATE data_sources SET secret_enc = $3 WHERE tenant_id = $1 AND id = $2 RETURNING id;

-- name: set-data-source-mapping
-- returns: DataSource
UPDATE data_sources SET field_mapping = $3 WHERE tenant_id = $1 AND id = $2
RETURNING id, tenant_id, kind::text AS kind, name, field_mapping, active, secret_enc IS NOT NULL AS has_secret,
          created_at;

-- name: webhook-source
-- The one lookup a webhook makes before its signature is checked: by id alone, since the caller has no key.
SELECT tenant_id, secret_enc, field_mapping, active FROM data_sources WHERE id = $1;

-- name: data-source-tenant
SELECT tenant_id FROM data_sources WHERE id = $1;
