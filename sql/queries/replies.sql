-- name: reply-match-message-id
-- The send row whose generated Message-ID a reply names (In-Reply-To, or one of its References).
SELECT id AS send_id, campaign_id, contact_id FROM sends
WHERE tenant_id = $1 AND message_id = ANY($2::text[])
ORDER BY array_position($2::text[], message_id)
LIMIT 1;

-- name: reply-match-send-id
-- A reply token names its send row; the row must be the tenant's.
SELECT id AS send_id, campaign_id, contact_id FROM sends WHERE tenant_id = $1 AND id = $2;

-- name: reply-match-sender
-- The latest message the tenant sent to this address since $3: a reply that names no Message-ID of ours.
SELECT s.id AS send_id, s.campaign_id, s.contact_id
FROM contacts c JOIN sends s ON s.contact_id = c.id AND s.tenant_id = c.tenant_id
WHERE c.tenant_id = $1 AND c.email = $2 AND s.injected_at >= $3
ORDER BY s.injected_at DESC
LIMIT 1;

-- name: reply-bounce-row
-- The latest message that left for an address a DSN says bounced (a follow-up still due has not left).
SELECT s.id FROM contacts c JOIN sends s ON s.contact_id = c.id AND s.tenant_id = c.tenant_id
WHERE c.tenant_id = $1 AND c.email = $2
  AND (s.status IN ('sending', 'injected', 'delivered') OR (s.status = 'deferred' AND s.attempts > 0))
ORDER BY s.id DESC
LIMIT 1;

-- name: reply-bounce
-- A DSN that came back as mail: the row bounced, as an accounting record would have said.
UPDATE sends SET status = 'bounced', bounce_category = coalesce(bounce_category, 'bad-mailbox'),
       finished_at = now()
WHERE id = $1 AND status IN ('sending', 'injected', 'deferred', 'delivered');

-- name: insert-reply
-- Once per Message-ID: a mailbox read twice stores nothing twice. The contact's history says it replied
-- (the kind and the campaign only: never the sender or the text).
WITH stored AS (
    INSERT INTO replies (tenant_id, campaign_id, contact_id, send_id, mailbox_id, kind, matched_by, from_email,
                         subject, message_id, return_date, received_at)
    VALUES ($1, $2, $3, $4, $5, $6::reply_kind, $7, $8, $9, $10, $11, $12)
    ON CONFLICT (tenant_id, message_id) DO NOTHING
    RETURNING id, contact_id
), event AS (
    INSERT INTO contact_events (contact_id, tenant_id, kind, detail)
    SELECT contact_id, $1, 'replied', jsonb_build_object('campaign_id', $2::bigint, 'reply', $6::text)
    FROM stored
)
SELECT id FROM stored;

-- name: list-replies
-- A campaign's replies, oldest first, keyset on id; optionally one contact's, or one kind.
-- returns: Reply
SELECT r.id, r.campaign_id, r.contact_id, r.send_id, s.step::int AS step, r.kind::text AS kind, r.matched_by,
       r.from_email, r.subject, r.return_date, r.received_at
FROM replies r LEFT JOIN sends s ON s.id = r.send_id
WHERE r.tenant_id = $1 AND r.campaign_id = $2 AND ($3::bigint IS NULL OR r.contact_id = $3)
  AND ($4::text IS NULL OR r.kind = $4::reply_kind) AND r.id > $5
ORDER BY r.id
LIMIT $6;
