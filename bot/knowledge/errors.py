"""The knowledge base's error, apart so that the CLI can catch it without importing numpy."""


class KBError(Exception):
    """A knowledge-base, query or import file is invalid; the message names file and line."""
