-- Sending IPs, domains and warmup: what the API and the daily warmup cron need on top of 0001's tables.
-- (The send log, `sends`, arrives in 0005, so nothing here may touch it.)

-- The figures each warmup decision was taken on, so an IP's history explains itself without re-reading
-- the send log (which may have been pruned by then).
ALTER TABLE warmup_events
    ADD COLUMN sent       integer,
    ADD COLUMN bounced    integer,
    ADD COLUMN complained integer;

-- The warmup listing of a tenant walks its plans in IP order; alerts are read per tenant, newest first.
CREATE INDEX warmup_plans_tenant ON warmup_plans (tenant_id, ip_id);
CREATE INDEX warmup_events_alerts ON warmup_events (tenant_id, on_day) WHERE alert;

-- When the DKIM key pair was last generated (NULL: never, as for the seeded domains).
ALTER TABLE domains ADD COLUMN dkim_rotated_at timestamptz;

-- The IPs a domain sends through are listed from the IP's side too (retiring an IP shows its domains).
CREATE INDEX domain_ips_ip ON domain_ips (ip_id);
