"""The built-in web chat: a page, a WebSocket, signed visitor sessions and limits."""
