-- The feedback flow from PowerMTA: complaints and bounce categories on the send log, and how far each
-- accounting file has been applied.

-- When a feedback-loop report named this message (the warmup charges complaints to the sending IP).
ALTER TABLE sends ADD COLUMN IF NOT EXISTS complained_at timestamptz;
-- PowerMTA's bounceCat of a bounced row: soft categories are counted per contact towards suppression.
ALTER TABLE sends ADD COLUMN IF NOT EXISTS bounce_category text;

-- One row per accounting file (by name: PowerMTA's rotated files are date-stamped, acct-2024-05-01-0000.csv).
-- bytes_applied is the end of the last complete record applied, so the next run seeks there; the header is
-- kept because a resumed read starts past it.
CREATE TABLE IF NOT EXISTS accounting_files (
    name           text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 255),
    size           bigint NOT NULL DEFAULT 0,
    bytes_applied  bigint NOT NULL DEFAULT 0,
    lines_applied  bigint NOT NULL DEFAULT 0,
    header         text,
    applied_at     timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);
