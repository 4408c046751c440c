-- name: dns-domains
-- returns: DomainDns
-- Everything the DNS records and checks of a domain are made of, for one tenant ($1, NULL: every tenant),
-- one domain name ($2) or one domain id ($3). The IPs are the domain's sending IPs, retired ones left out
-- (they will never send again). The previous DKIM key stays in use while PowerMTA may still hold a
-- message signed with it: a send of one of the domain's campaigns accepted (injected) before the
-- rotation and without its final accounting record yet.
SELECT d.id, d.tenant_id, d.name, d.dkim_selector, d.dkim_public_key, d.dkim_previous_selector,
       d.dkim_previous_public_key,
       (d.dkim_previous_selector IS NOT NULL AND EXISTS (
            SELECT 1 FROM campaigns c JOIN sends s ON s.campaign_id = c.id
            WHERE c.tenant_id = d.tenant_id AND lower(split_part(c.from_email, '@', 2)) = d.name
              AND s.status = 'injected' AND s.injected_at <= d.dkim_rotated_at)) AS previous_in_use,
       d.return_path, t.settings AS tenant_settings,
       coalesce(array_agg(host(i.address) ORDER BY i.address) FILTER (WHERE i.id IS NOT NULL), '{}') AS ip_addresses,
       coalesce(array_agg(i.hostname ORDER BY i.address) FILTER (WHERE i.id IS NOT NULL), '{}') AS ip_hostnames
FROM domains d
JOIN tenants t ON t.id = d.tenant_id
LEFT JOIN domain_ips di ON di.domain_id = d.id
LEFT JOIN ips i ON i.id = di.ip_id AND i.status <> 'retired'
WHERE ($1::bigint IS NULL OR d.tenant_id = $1) AND ($2::text IS NULL OR d.name = $2)
  AND ($3::bigint IS NULL OR d.id = $3)
GROUP BY d.id, t.settings
ORDER BY d.id;

-- name: dns-ips
-- returns: IpDns
-- The IPs whose reverse DNS and blocklist listings are watched: every IP not retired.
SELECT id, tenant_id, host(address) AS address, hostname, status::text AS status
FROM ips
WHERE ($1::bigint IS NULL OR tenant_id = $1) AND status <> 'retired'
ORDER BY id;

-- name: dns-set-tenant-policy
-- The tenant's DMARC policy, report address and SPF includes live in its settings beside the warmup curve;
-- a NULL value removes the key (back to the default).
UPDATE tenants SET settings = jsonb_strip_nulls(settings || $2::jsonb), updated_at = now()
WHERE id = $1
RETURNING settings;

-- name: dns-set-return-path
UPDATE domains SET return_path = $3, updated_at = now() WHERE tenant_id = $1 AND id = $2 RETURNING id;
