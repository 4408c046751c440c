-- name: mta-vmtas
-- returns: MtaIp
-- Every IP PowerMTA must know ($1: one tenant, NULL: all), in a stable order. Retired IPs are left out:
-- they never send again. The quota is the one the engine enforces today (ips-sending-candidates): the
-- plan's current step for a warming IP, the daily cap otherwise.
SELECT i.id, i.tenant_id, t.slug AS tenant_slug, i.vmta_name, host(i.address) AS address, i.hostname,
       i.status::text AS status,
       CASE WHEN i.status = 'warming' AND w.ip_id IS NOT NULL
            THEN w.curve[least(w.current_day, cardinality(w.curve) - 1) + 1]
            ELSE i.daily_cap END AS daily_quota
FROM ips i
JOIN tenants t ON t.id = i.tenant_id
LEFT JOIN warmup_plans w ON w.ip_id = i.id
WHERE ($1::bigint IS NULL OR i.tenant_id = $1) AND i.status <> 'retired'
ORDER BY i.tenant_id, i.vmta_name;

-- name: mta-domain-keys
-- The DKIM private keys PowerMTA signs with (encrypted; decrypted only to write the key files).
SELECT d.id, d.tenant_id, d.name, d.dkim_selector, d.dkim_private_key_enc
FROM domains d
WHERE ($1::bigint IS NULL OR d.tenant_id = $1) AND d.dkim_private_key_enc IS NOT NULL
ORDER BY d.name;
