"""Human agents: the desk service (claim, reply, resolve, ...), authentication, live events."""
