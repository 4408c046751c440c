-- name: create-import
-- returns: Import
INSERT INTO imports (tenant_id, file_path, file_bytes, mapping, defaults, encoding, delimiter)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING id, tenant_id, status::text AS status, file_bytes, mapping, defaults, encoding, delimiter,
          rows_read, created, updated,
          unchanged, rejected, error, created_at, started_at, finished_at;

-- name: get-import
-- returns: Import
SELECT id, tenant_id, status::text AS status, file_bytes, mapping, defaults, encoding, delimiter,
       rows_read, created, updated,
       unchanged, rejected, error, created_at, started_at, finished_at
FROM imports WHERE id = $1 AND ($2::bigint IS NULL OR tenant_id = $2::bigint);

-- name: start-import
-- Claims the import for a run; a re-run after a crash resumes after `rows_read` rows.
UPDATE imports SET status = 'running', started_at = coalesce(started_at, now())
WHERE id = $1 AND status IN ('queued', 'running')
RETURNING tenant_id, file_path, mapping, defaults, encoding, delimiter, rows_read;

-- name: advance-import
-- The counters move in the same transaction as the batch they count, so a resumed run neither skips nor
-- double-counts a row.
UPDATE imports SET rows_read = rows_read + $2, created = created + $3, updated = updated + $4,
       unchanged = unchanged + $5, rejected = rejected + $6
WHERE id = $1;

-- name: add-import-rejects
INSERT INTO import_rejects (import_id, line, reason, raw)
SELECT $1, r.line, r.reason, r.raw FROM unnest($2::bigint[], $3::text[], $4::text[]) AS r(line, reason, raw)
ON CONFLICT (import_id, line) DO NOTHING;

-- name: finish-import
UPDATE imports SET status = $2::import_status, error = $3, finished_at = now() WHERE id = $1;

-- name: list-import-rejects
-- returns: ImportReject
SELECT line, reason, raw FROM import_rejects WHERE import_id = $1 AND line > $2 ORDER BY line LIMIT $3;
