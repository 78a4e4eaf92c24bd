"""Messages in and out: the inbox, the outbox dispatcher, flood control, leases, dead letters."""
