"""The contact history and what is computed from it: value, lifecycle, GDPR, import, analytics."""
