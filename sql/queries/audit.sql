-- name: insert-audit-entry
-- One change made through the API, written in the change's own transaction (before its commit).
INSERT INTO audit_log (tenant_id, actor, key_id, action, method, path, target, summary, request_id)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9)
RETURNING id;

-- name: list-audit-entries
-- returns: AuditEntry
-- Newest first by keyset on id; every filter is optional (NULL = any). $1 NULL is the admin's view of all
-- tenants. Served by audit_log_tenant_id, or the primary key when all tenants are listed.
SELECT id, tenant_id, actor, key_id, action, method, path, target, summary,
       request_id, created_at
FROM audit_log
WHERE ($1::bigint IS NULL OR tenant_id = $1)
  AND ($2::text IS NULL OR action = $2)
  AND ($3::bigint IS NULL OR key_id = $3)
  AND ($4::text IS NULL OR actor = $4)
  AND ($5::timestamptz IS NULL OR created_at >= $5)
  AND ($6::timestamptz IS NULL OR created_at < $6)
  AND ($7::bigint IS NULL OR id < $7)
ORDER BY id DESC
LIMIT $8;
