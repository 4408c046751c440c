-- The validation sweep reads pending contacts oldest change first; most contacts are not pending, so a
-- partial index stays small.
CREATE INDEX contacts_pending_updated ON contacts (updated_at) WHERE status = 'pending';
