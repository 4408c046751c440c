-- What a sending campaign is waiting for right now (its sending window, its daily cap, a From domain held by
-- the DNS checks or a blocklist), or NULL while it sends. Written only when it changes.
ALTER TABLE campaigns ADD COLUMN wait_reason text;
