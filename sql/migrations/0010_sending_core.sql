-- The sending core's fences and ledgers: claim generations, quota grants recorded before injection,
-- worker heartbeats that survive a Redis loss, and the reason a campaign paused itself.

-- Every claim bumps the generation; a write is applied only by the worker that holds the row in the
-- generation it claimed, so a worker whose rows were taken back (it stalled, it was thought dead) cannot
-- overwrite what another worker now does with them.
ALTER TABLE sends ADD COLUMN claim_gen integer NOT NULL DEFAULT 0;
-- When the row first waited for its contact's validation (the tenant's wait limit counts from here).
ALTER TABLE sends ADD COLUMN waiting_since timestamptz;
-- The PowerMTA category of a refusal at injection or of a bounce record (one vocabulary, see bounces.toml).
-- (sends.bounce_category exists since 0008.)

-- Results dropped because their rows had been taken back from the worker that sent them.
ALTER TABLE campaigns ADD COLUMN stale_results integer NOT NULL DEFAULT 0;
-- Why the engine paused the campaign itself (a sender-side refusal, say); NULL for an operator's pause.
ALTER TABLE campaigns ADD COLUMN pause_reason text;

-- Quota tokens granted per IP (or campaign daily cap) and day, written in the same transaction that takes
-- them from Redis and stamps the send rows, under the tenant's grant lock: a bucket rebuilt after Redis lost
-- it starts from here and never counts fewer tokens than were granted. Tokens given back are subtracted.
CREATE TYPE quota_scope AS ENUM ('ip', 'campaign');
CREATE TABLE quota_grants (
    scope     quota_scope NOT NULL,
    scope_id  bigint NOT NULL,
    day       date NOT NULL,       -- the tenant's local day, as the Redis day keys name it
    granted   integer NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, scope_id, day)
);

-- Sending workers alive: a row per worker, refreshed every few seconds. In PostgreSQL rather than Redis so
-- that a Redis restart does not make every worker look dead and their in-flight rows requeued.
CREATE TABLE workers (
    id            text PRIMARY KEY,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);
