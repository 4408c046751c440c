"""MailWizz: the REST client and its wire format, subscriber sync, and campaigns sent through MailWizz."""
