-- name: seed-tenant
-- Insert-or-keep by slug so the seed can run any number of times; returns the id either way.
WITH ins AS (
    INSERT INTO tenants (slug, name, timezone, transport) VALUES ($1, $2, $3, $4)
    ON CONFLICT (slug) DO NOTHING
    RETURNING id
)
SELECT id FROM ins UNION ALL SELECT id FROM tenants WHERE slug = $1
LIMIT 1;

-- name: seed-data-source
INSERT INTO data_sources (tenant_id, kind, name, field_mapping)
VALUES ($1, $2::data_source_kind, $3, $4)
ON CONFLICT (tenant_id, name) DO NOTHING;

-- name: seed-tags
INSERT INTO tags (tenant_id, slug)
SELECT $1, unnest($2::text[])
ON CONFLICT (tenant_id, slug) DO NOTHING;

-- name: seed-ips
-- One row per address; the address is unique across tenants, so a re-run inserts nothing.
INSERT INTO ips (tenant_id, address, hostname, vmta_name, weight, pool, status, daily_cap)
SELECT $1, a.address::inet, a.hostname, a.vmta_name, a.weight, $2, 'warming', $3
FROM unnest($4::text[], $5::text[], $6::text[], $7::int[]) AS a(address, hostname, vmta_name, weight)
ON CONFLICT (address) DO NOTHING;

-- name: seed-warmup-plans
-- A plan for every IP of the tenant that has none yet, on the default curve.
INSERT INTO warmup_plans (ip_id, tenant_id, curve, target)
SELECT id, tenant_id, $2::int[], daily_cap
FROM ips
WHERE tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM warmup_plans w WHERE w.ip_id = ips.id);

-- name: seed-domains
INSERT INTO domains (tenant_id, name)
SELECT $1, unnest($2::text[])
ON CONFLICT (name) DO NOTHING;

-- name: seed-domain-ips
-- Each domain sends through every IP of its tenant's default pool.
INSERT INTO domain_ips (domain_id, ip_id)
SELECT d.id, i.id
FROM domains d JOIN ips i ON i.tenant_id = d.tenant_id
WHERE d.tenant_id = $1
ON CONFLICT DO NOTHING;

-- name: seed-mailwizz
INSERT INTO mailwizz_instances (tenant_id, name, base_url)
VALUES ($1, $2, $3)
ON CONFLICT (tenant_id, name) DO NOTHING;
