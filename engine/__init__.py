"""email-engine: the domain core (contacts, templates, campaigns, warmup, rotation, quotas, validation)."""
