"""Who a Slack user is: name, locale and (with the users:read.email scope) email, looked up
once with users.info and kept for `user_cache_seconds` (LRU-bounded). A failed look-up is
not cached and never stops a message: the message goes on without the profile."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from slack_sdk.web.async_client import AsyncWebClient

from channels.slack.send import SEND_ERRORS, to_send_error

log = logging.getLogger(__name__)
MAX_USERS = 10_000


@dataclass(frozen=True)
class Profile:
    user_id: str
    name: str | None = None
    locale: str | None = None
    email: str | None = None
    is_bot: bool = False


def profile_of(user: dict[str, object]) -> Profile:
    raw_profile = user.get("profile")
    profile = raw_profile if isinstance(raw_profile, dict) else {}

    def text(value: object) -> str | None:
        return value.strip() if isinstance(value, str) and value.strip() else None

    name = (
        text(user.get("real_name"))
        or text(profile.get("real_name"))
        or text(profile.get("display_name"))
        or text(user.get("name"))
    )
    return Profile(
        user_id=str(user.get("id", "")),
        name=name[:200] if name else None,
        locale=text(user.get("locale")),
        email=text(profile.get("email")),
        is_bot=bool(user.get("is_bot")) or user.get("id") == "USLACKBOT",
    )


class UserDirectory:
    def __init__(self, client: AsyncWebClient, ttl_seconds: float) -> None:
        self.client = client
        self.ttl = ttl_seconds
        self._cache: OrderedDict[str, tuple[float, Profile]] = OrderedDict()
        self.lookups = 0  # users.info calls made (for tests and logs)

    async def get(self, user_id: str) -> Profile | None:
        now = time.monotonic()
        hit = self._cache.get(user_id)
        if hit is not None and now - hit[0] < self.ttl:
            self._cache.move_to_end(user_id)
            return hit[1]
        self.lookups += 1
        try:
            response = await self.client.users_info(user=user_id, include_locale=True)
        except SEND_ERRORS as exc:
            log.warning("slack users.info for %s failed: %s", user_id, to_send_error(exc))
            return None
        user = response.get("user")
        if not isinstance(user, dict):
            return None
        profile = profile_of(user)
        self._cache[user_id] = (now, profile)
        while len(self._cache) > MAX_USERS:
            self._cache.popitem(last=False)
        return profile
