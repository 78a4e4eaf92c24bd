"""cicbot's core: the conversation engine and the services around it (docs/architecture.md)."""
