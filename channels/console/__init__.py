"""The terminal chat (`cicbot chat`): a channel for trying the bot and for scripts."""
