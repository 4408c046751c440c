"""PowerMTA: SMTP injection per virtual MTA, config generation and accounting."""
