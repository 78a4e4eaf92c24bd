"""Is an email's sender who its From: says? Only where the receiving server vouches for it.

Anyone can write any From:. The receiving server checks SPF, DKIM and DMARC and writes
the results into an `Authentication-Results` header (RFC 8601) with its own name, the
authserv-id. A sender counts as verified only when:

* the topmost Authentication-Results header carrying an authserv-id from
  `email.trusted_authserv_ids` (the last one added, by the receiving server itself; the
  ones below it came with the mail and may be forged) says `dmarc=pass`,
* for the domain of the mail's one From: address (`header.from`).

A server that vouches must also remove any header with its own authserv-id that arrives
with a mail (RFC 8601 §5): Postfix with OpenDMARC, rspamd, Gmail and Microsoft 365 do.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from email.message import Message
from email.utils import getaddresses

import authres

AUTHSERV_ID = re.compile(r"^\s*(?:\([^()]*\)\s*)*([^\s;()]+)")


def sender_verified(msg: Message, trusted: Collection[str]) -> bool:
    if not trusted:
        return False
    senders = [a for _, a in getaddresses(_all(msg, "From")) if a]
    if len(senders) != 1 or "@" not in senders[0]:
        return False  # DMARC judges one From: address; with several, which one did it?
    domain = senders[0].rsplit("@", 1)[1].lower()
    for value in _all(msg, "Authentication-Results"):
        m = AUTHSERV_ID.match(value)
        if m is None or m.group(1).lower() not in trusted:
            continue  # another server's, or one that came with the mail from outside
        try:
            header = authres.AuthenticationResultsHeader.parse_value(value)
        except Exception:  # authres raises its own SyntaxError
            return False  # the trusted server's verdict is unreadable: no verdict
        return any(
            r.method.lower() == "dmarc"
            and str(r.result).lower() == "pass"
            and any(
                p.type == "header" and p.name == "from" and str(p.value).lower() == domain
                for p in r.properties
            )
            for r in header.results
        )
    return False


def _all(msg: Message, name: str) -> list[str]:
    """Every occurrence of a header, top to bottom, as raw unfolded text."""
    return [" ".join(str(v).split()) for k, v in msg.raw_items() if k.lower() == name.lower()]
