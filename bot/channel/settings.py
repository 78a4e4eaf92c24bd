"""The base of a channel's settings model (channels/<name>/settings.py).

A channel names its model in the `cicbot.channel_settings` entry point (pyproject.toml);
bot/config.py adds it as the section `<name>` of the configuration, so adding a channel
edits nothing in bot/. Its `SecretStr` fields may only come from the environment
(CICBOT_<NAME>__<FIELD>) and are redacted from the logs; a `ConfigFile` field names a file
whose relative path is read against config.yaml's folder (not the working directory).
Importing the module must stay cheap: pydantic only, never the platform library.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict


class InConfigFolder:
    """Marks a field naming a file: bot/config.py resolves a relative one against the
    configuration file's folder."""


ConfigFile = Annotated[str, InConfigFolder()]


class ChannelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
