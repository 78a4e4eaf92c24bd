"""Channel adapters, one folder each, found through the `cicbot.channels` entry points."""
