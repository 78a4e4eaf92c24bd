"""Email: IMAP in (TLS), SMTP out, parsing, reply extraction, sender verification."""
