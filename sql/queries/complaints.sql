-- name: complaints-send-by-id
-- returns: ComplainedRow
-- The send row a report names by its envelope id (X-Envelope-Id, Original-Envelope-Id); $2 NULL: any
-- tenant's (the admin, the watched directory), else only that tenant's.
SELECT s.id, s.tenant_id, s.campaign_id, s.contact_id, s.ip_id, s.status::text AS status, c.email
FROM sends s LEFT JOIN contacts c ON c.id = s.contact_id AND c.tenant_id = s.tenant_id
WHERE s.id = $1 AND ($2::bigint IS NULL OR s.tenant_id = $2);

-- name: complaints-send-by-message-id
-- returns: ComplainedRow
-- By the original Message-ID (sends_message_id); a Message-ID is the engine's own and unique in practice,
-- the newest row wins if it ever is not.
SELECT s.id, s.tenant_id, s.campaign_id, s.contact_id, s.ip_id, s.status::text AS status, c.email
FROM sends s LEFT JOIN contacts c ON c.id = s.contact_id AND c.tenant_id = s.tenant_id
WHERE s.message_id = $1 AND ($2::bigint IS NULL OR s.tenant_id = $2)
ORDER BY s.id DESC
LIMIT 1;

-- name: complaints-send-by-campaign
-- returns: ComplainedRow
-- By the campaign (X-Job, Feedback-ID) and the recipient: the contact through its dedup hash, then its
-- newest row in that campaign (a sequence has one per step; the complaint is about the latest message).
SELECT s.id, s.tenant_id, s.campaign_id, s.contact_id, s.ip_id, s.status::text AS status, c.email
FROM campaigns k
JOIN contacts c ON c.tenant_id = k.tenant_id AND c.email_hash = $2
JOIN sends s ON s.campaign_id = k.id AND s.contact_id = c.id
WHERE k.id = $1 AND ($3::bigint IS NULL OR k.tenant_id = $3)
ORDER BY s.id DESC
LIMIT 1;

-- name: complaints-create-report
-- A report already stored for this tenant (or unmatched) returns nothing: it is not counted again.
INSERT INTO complaint_reports (tenant_id, send_id, campaign_id, ip_id, matched_by, source, format, feedback_type,
                               user_agent, arrival_date, source_ip, original_rcpt, message_id, envelope_id, x_job,
                               feedback_id, report_hash)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
ON CONFLICT ((coalesce(tenant_id, 0)), report_hash) DO NOTHING
RETURNING id;

-- name: complaints-find-report
SELECT id, send_id, campaign_id, matched_by FROM complaint_reports
WHERE coalesce(tenant_id, 0) = coalesce($1::bigint, 0) AND report_hash = $2;

-- name: complaints-list-reports
-- returns: ComplaintReport
-- Newest first, keyset on id; $1 NULL: every tenant's and the unmatched ones nobody's; $2: matched or not.
SELECT id, tenant_id, send_id, campaign_id, ip_id, matched_by, source, format, feedback_type, user_agent,
       arrival_date, source_ip, original_rcpt, message_id, envelope_id, x_job, feedback_id, created_at
FROM complaint_reports
WHERE ($1::bigint IS NULL OR tenant_id = $1)
  AND ($2::bool IS NULL OR (send_id IS NOT NULL) = $2)
  AND ($3::bigint IS NULL OR id < $3)
ORDER BY id DESC
LIMIT $4;
