-- name: feedback-send-rows
-- The send rows a batch of records names, with the contact's stored address: the tenant, the campaign and
-- the recipient are taken from here, never from the record (an ENVID only points at a row).
SELECT s.id, s.tenant_id, s.campaign_id, s.contact_id, s.ip_id, s.status::text AS status, c.email, c.mx_host
FROM sends s
LEFT JOIN contacts c ON c.id = s.contact_id AND c.tenant_id = s.tenant_id
WHERE s.id = ANY($1::bigint[]);

-- name: feedback-mark-delivered
-- A delivery settles rows PowerMTA accepted; a row already bounced (or failed, skipped) keeps its state, so
-- a file applied twice or out of order never downgrades a bounce. ip_id is left as the dispatcher set it.
UPDATE sends s
SET status = 'delivered', finished_at = coalesce(u.at, now()), smtp_code = u.code, smtp_status = u.enhanced,
    detail = u.detail
FROM unnest($1::bigint[], $2::timestamptz[], $3::int[], $4::text[], $5::text[])
     AS u(id, at, code, enhanced, detail)
WHERE s.id = u.id AND s.status IN ('sending', 'injected', 'deferred')
RETURNING s.id;

-- name: feedback-mark-bounced
-- A bounce may follow a delivery (remote bounces come after the receiving MTA accepted the message); a row
-- already bounced is left alone, which keeps a second application from rewriting anything.
UPDATE sends s
SET status = 'bounced', finished_at = coalesce(u.at, now()), smtp_code = u.code, smtp_status = u.enhanced,
    detail = u.detail, bounce_category = u.category
FROM unnest($1::bigint[], $2::timestamptz[], $3::int[], $4::text[], $5::text[], $6::text[])
     AS u(id, at, code, enhanced, detail, category)
WHERE s.id = u.id AND s.status IN ('sending', 'injected', 'deferred', 'delivered')
RETURNING s.id;

-- name: feedback-mark-transient
-- A deferral inside PowerMTA's queue: the row stays 'injected' (the engine's own 'deferred' means "send it
-- again", which PowerMTA is already doing); only the last reason is kept, and only when it is new.
UPDATE sends s
SET smtp_code = u.code, smtp_status = u.enhanced, detail = u.detail
FROM unnest($1::bigint[], $2::timestamptz[], $3::int[], $4::text[], $5::text[])
     AS u(id, at, code, enhanced, detail)
WHERE s.id = u.id AND s.status = 'injected' AND s.detail IS DISTINCT FROM u.detail
RETURNING s.id;

-- name: feedback-mark-complained
-- The first complaint about a message is the one kept.
UPDATE sends s
SET complained_at = coalesce(u.at, now())
FROM unnest($1::bigint[], $2::timestamptz[]) AS u(id, at)
WHERE s.id = u.id AND s.complained_at IS NULL
RETURNING s.id;

-- name: feedback-soft-bounced-contacts
-- Contacts of one tenant whose soft bounces in a row reached the limit: only bounces of messages sent after
-- the contact's last delivered one count (a mailbox full once a year is not a dead one). Send ids follow
-- the order campaigns were sent in; sends_contact serves both lookups by contact.
SELECT c.email
FROM sends s
JOIN contacts c ON c.id = s.contact_id AND c.tenant_id = s.tenant_id
WHERE s.tenant_id = $1 AND s.contact_id = ANY($2::bigint[]) AND s.status = 'bounced'
  AND s.bounce_category = ANY($3::text[]) AND c.email IS NOT NULL
  AND s.id > coalesce((SELECT max(d.id) FROM sends d
                       WHERE d.tenant_id = s.tenant_id AND d.contact_id = s.contact_id AND d.status = 'delivered'), 0)
GROUP BY c.email
HAVING count(*) >= $4;

-- name: feedback-get-accounting-file
-- returns: AccountingFile
SELECT name, size, bytes_applied, lines_applied, header, applied_at
FROM accounting_files
WHERE name = $1;

-- name: feedback-save-accounting-file
-- Written in the same transaction as the batch it follows: the offset never runs ahead of what is applied.
INSERT INTO accounting_files (name, size, bytes_applied, lines_applied, header, applied_at)
VALUES ($1, $2, $3, $4, $5, now())
ON CONFLICT (name) DO UPDATE
SET size = EXCLUDED.size, bytes_applied = EXCLUDED.bytes_applied, lines_applied = EXCLUDED.lines_applied,
    header = EXCLUDED.header, applied_at = EXCLUDED.applied_at;

-- name: feedback-list-accounting-files
-- returns: AccountingFile
SELECT name, size, bytes_applied, lines_applied, header, applied_at
FROM accounting_files
ORDER BY applied_at DESC NULLS LAST, name
LIMIT $1;
