-- name: grants-lock
-- The tenant's grant lock: every quota take, refund and ledger write of a tenant's IPs and campaigns runs in
-- a transaction holding it, so a bucket rebuilt inside it reads a ledger nobody else is changing.
-- $1 is the lock space (two-int form, apart from the migration lock's one-bigint space), $2 the tenant.
SELECT pg_advisory_xact_lock($1::int, $2::int);

-- name: grants-on-day
-- Tokens granted so far on a day, per IP or campaign of one scope.
SELECT scope_id, granted FROM quota_grants WHERE scope = $1::quota_scope AND day = $2 AND scope_id = ANY($3::bigint[]);

-- name: grants-add
-- Tokens granted per scope id on a day, added to what the ledger holds.
INSERT INTO quota_grants AS g (scope, scope_id, day, granted)
SELECT $1::quota_scope, u.scope_id, $2, u.n FROM unnest($3::bigint[], $4::int[]) AS u(scope_id, n)
ON CONFLICT (scope, scope_id, day) DO UPDATE SET granted = g.granted + EXCLUDED.granted;

-- name: grants-give-back
-- Tokens granted and not used (the message never left), subtracted again; never below zero.
UPDATE quota_grants g SET granted = greatest(g.granted - u.n, 0)
FROM unnest($3::bigint[], $4::int[]) AS u(scope_id, n)
WHERE g.scope = $1::quota_scope AND g.day = $2 AND g.scope_id = u.scope_id;
