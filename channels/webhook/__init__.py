"""A generic JSON webhook channel: a shop or a form talks to the bot over signed HTTP."""
