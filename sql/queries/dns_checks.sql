-- name: dns-store-domain
-- Returns the statuses it replaced: a record that was ok and is not any more raises an alert.
WITH before AS (
    SELECT id, spf_status, dkim_status, dmarc_status, ptr_status FROM domains
    WHERE tenant_id = $1 AND id = $2
    FOR UPDATE
)
UPDATE domains d SET spf_status = $3, dkim_status = $4, dmarc_status = $5, ptr_status = $6, dns_report = $7,
                     checked_at = now(), updated_at = now()
FROM before
WHERE d.tenant_id = $1 AND d.id = before.id
RETURNING before.spf_status AS spf, before.dkim_status AS dkim, before.dmarc_status AS dmarc,
          before.ptr_status AS ptr;

-- name: dns-store-ip
UPDATE ips SET ptr_status = $3, dns_report = $4, dns_checked_at = now()
WHERE tenant_id = $1 AND id = $2;

-- name: dns-domain-report
-- What the last check stored for one domain, with the PTR findings of its IPs.
SELECT d.id, d.name, d.spf_status, d.dkim_status, d.dmarc_status, d.ptr_status, d.dns_report, d.checked_at,
       d.held_reason
FROM domains d
WHERE d.tenant_id = $1 AND d.id = $2;

-- name: dns-sending-domain
-- The sending state of the domain a campaign's From address is at: what may keep it from sending.
SELECT name, spf_status, dkim_status, dns_report, held_reason
FROM domains
WHERE tenant_id = $1 AND name = $2;

-- name: dns-ip-report
-- What the last checks found for one IP: its FCrDNS and its blocklist lookups.
SELECT id AS ip_id, host(address) AS address, hostname, status::text AS status, status_reason, ptr_status,
       dns_report, dns_checked_at, blocklist_report, blocklist_checked_at
FROM ips
WHERE tenant_id = $1 AND id = $2;
