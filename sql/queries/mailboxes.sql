-- name: upsert-mailbox
-- returns: Mailbox
INSERT INTO reply_mailboxes (tenant_id, host, port, tls, username, password_enc, folder, address, plus_addressing)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (tenant_id, host, username, folder) DO UPDATE
SET port = EXCLUDED.port, tls = EXCLUDED.tls, password_enc = EXCLUDED.password_enc, address = EXCLUDED.address,
    plus_addressing = EXCLUDED.plus_addressing, last_error = NULL
RETURNING id, tenant_id, host, port, tls, username, folder, address, plus_addressing, last_uid, last_error,
          checked_at, created_at;

-- name: list-mailboxes
-- A tenant's mailboxes, without their passwords.
-- returns: Mailbox
SELECT id, tenant_id, host, port, tls, username, folder, address, plus_addressing, last_uid, last_error,
       checked_at, created_at
FROM reply_mailboxes WHERE tenant_id = $1 ORDER BY id;

-- name: delete-mailbox
DELETE FROM reply_mailboxes WHERE tenant_id = $1 AND id = $2 RETURNING id;

-- name: all-mailboxes
-- Every tenant's mailboxes, for the worker that reads them (the password stays encrypted until the connection).
SELECT id, tenant_id, host, port, tls, username, password_enc, folder, last_uid, uid_validity
FROM reply_mailboxes ORDER BY id;

-- name: mailbox-progress
-- How far a mailbox has been read; written after every message stored, so a crash reads nothing twice.
UPDATE reply_mailboxes SET last_uid = $2, uid_validity = $3, last_error = $4, checked_at = now() WHERE id = $1;

-- name: tenant-reply-address
-- The plus-addressed mailbox replies of this tenant go to, if it has one.
SELECT address FROM reply_mailboxes
WHERE tenant_id = $1 AND plus_addressing AND address IS NOT NULL
ORDER BY id LIMIT 1;
