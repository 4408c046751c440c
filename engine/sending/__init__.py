"""Flow 2, sending: the send policy, the send log, quotas and rotation, message building, and the dispatcher
that hands messages to a transport (PowerMTA's SMTP injector or MailWizz)."""
