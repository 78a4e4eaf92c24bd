"""Reply extraction on the table tests/fixtures/email/replies.yaml: talon's own fixtures and
mails as clients write them in de, en, fr, es, it, nl, ru and pl (top-posted, bottom-posted,
inline, Outlook header blocks, signatures and sentences that only look like them, HTML).
`bench/email_replies.py` scores the libraries made for this on the same table."""

from __future__ import annotations

import pytest

from tests.channels.reply_table import CASES, body, cicbot, same


@pytest.mark.parametrize(("name", "expected"), CASES.items(), ids=list(CASES))
def test_reply(name: str, expected: str) -> None:
    got = cicbot(*body(name))
    assert same(got, expected), f"{name}:\n{got!r}"
