-- name: create-domain
-- Domain names are unique across tenants: a domain's DNS can only vouch for one sender.
INSERT INTO domains (tenant_id, name, dkim_selector, dkim_public_key, dkim_private_key_enc, dkim_rotated_at)
VALUES ($1, $2, $3, $4, $5, CASE WHEN $4::text IS NULL THEN NULL ELSE now() END)
RETURNING id;

-- name: list-domains
-- returns: Domain
-- The IPs that send for each domain come along as an array, so one query serves a whole listing.
SELECT d.id, d.tenant_id, d.name, d.dkim_selector, d.dkim_selector || '._domainkey.' || d.name AS dkim_record,
       d.dkim_public_key, d.dkim_rotated_at,
       coalesce((SELECT array_agg(di.ip_id ORDER BY di.ip_id) FROM domain_ips di WHERE di.domain_id = d.id),
                '{}') AS ip_ids,
       d.spf_status, d.dkim_status, d.dmarc_status, d.ptr_status, d.checked_at, d.created_at, d.updated_at
FROM domains d
WHERE d.tenant_id = $1
ORDER BY d.id;

-- name: get-domain
-- returns: Domain
SELECT d.id, d.tenant_id, d.name, d.dkim_selector, d.dkim_selector || '._domainkey.' || d.name AS dkim_record,
       d.dkim_public_key, d.dkim_rotated_at,
       coalesce((SELECT array_agg(di.ip_id ORDER BY di.ip_id) FROM domain_ips di WHERE di.domain_id = d.id),
                '{}') AS ip_ids,
       d.spf_status, d.dkim_status, d.dmarc_status, d.ptr_status, d.checked_at, d.created_at, d.updated_at
FROM domains d
WHERE d.tenant_id = $1 AND d.id = $2;

-- name: domain-foreign-ips
-- The ids among $2 that are not IPs of tenant $1: a domain may only send through its own tenant's IPs.
SELECT x.id
FROM unnest($2::bigint[]) AS x(id)
WHERE NOT EXISTS (SELECT 1 FROM ips i WHERE i.id = x.id AND i.tenant_id = $1)
ORDER BY x.id;

-- name: domain-set-ips
-- Replace the domain's IPs in one statement: drop those not listed, add the new ones.
WITH gone AS (
    DELETE FROM domain_ips WHERE domain_id = $1 AND NOT (ip_id = ANY($2::bigint[]))
)
INSERT INTO domain_ips (domain_id, ip_id)
SELECT $1, unnest($2::bigint[])
ON CONFLICT DO NOTHING;

-- name: update-domain
UPDATE domains SET spf_status = coalesce($3, spf_status), dkim_status = coalesce($4, dkim_status),
                   dmarc_status = coalesce($5, dmarc_status), ptr_status = coalesce($6, ptr_status),
                   checked_at = CASE WHEN coalesce($3, $4, $5, $6) IS NULL THEN checked_at ELSE now() END,
                   updated_at = now()
WHERE tenant_id = $1 AND id = $2
RETURNING id;

-- name: rotate-domain-dkim
-- A new key pair, under a new selector when the caller chose one; the DKIM check must be run again. The
-- replaced public key is kept (under its selector) so its record stays published while PowerMTA may still
-- hold mail signed with it; a key rotated in place (same selector) has no old record to keep.
UPDATE domains SET dkim_previous_selector = CASE WHEN dkim_selector <> $3 AND dkim_public_key IS NOT NULL
                                                 THEN dkim_selector END,
                   dkim_previous_public_key = CASE WHEN dkim_selector <> $3 THEN dkim_public_key END,
                   dkim_selector = $3, dkim_public_key = $4, dkim_private_key_enc = $5, dkim_rotated_at = now(),
                   dkim_status = 'unchecked', updated_at = now()
WHERE tenant_id = $1 AND id = $2
RETURNING id;

-- name: domain-dkim-state
SELECT dkim_selector, dkim_public_key IS NOT NULL AS has_key FROM domains WHERE tenant_id = $1 AND id = $2;

-- name: domains-without-key
-- Domains whose key pair was never generated ($1: one tenant, NULL: all).
SELECT id, tenant_id, dkim_selector FROM domains
WHERE dkim_public_key IS NULL AND ($1::bigint IS NULL OR tenant_id = $1)
ORDER BY id;

-- name: domain-private-key
-- For the PowerMTA config generator only: the encrypted PEM, never sent through the API.
SELECT dkim_selector, dkim_private_key_enc FROM domains WHERE tenant_id = $1 AND id = $2;

-- name: delete-domain
DELETE FROM domains WHERE tenant_id = $1 AND id = $2 RETURNING id;
