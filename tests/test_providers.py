"""Destination providers by MX host, and their default caps table."""

from __future__ import annotations

import pytest

from engine.providers import DEFAULT_CAPS, MX_SUFFIXES, OTHER, default_cap, provider_for_mx


@pytest.mark.parametrize(("mx", "provider"), [
    ("aspmx.l.google.com", "gmail"),
    ("ALT1.ASPMX.L.GOOGLE.COM.", "gmail"),
    ("gmail-smtp-in.l.googlemail.com", "gmail"),
    ("tenant-test.mail.protection.outlook.com", "outlook"),
    ("hotmail-com.olc.protection.outlook.com", "outlook"),
    ("mx1.hotmail.com", "outlook"),
    ("mta5.am0.yahoodns.net", "yahoo"),
    ("mx01.mail.icloud.com", "icloud"),
    ("mx00.gmx.net", "gmx"),
    ("smtp-in.orange.fr", "orange"),
    ("mx1.free.fr", "free"),
    ("mxs.mail.ru", "mailru"),
    ("mx.yandex.net", "yandex"),
    ("mx1.qq.com", "qq"),
    ("mx.example.test", OTHER),
    ("notgoogle.com", OTHER),  # a suffix matches whole labels only
    ("", OTHER),
    (None, OTHER),
])
def test_provider_for_mx(mx, provider):
    assert provider_for_mx(mx) == provider


def test_every_provider_in_the_table_has_a_sane_default_cap():
    for provider in set(MX_SUFFIXES.values()):
        cap = default_cap(provider)
        assert cap is not None and cap.per_hour and cap.per_day
        assert cap.per_hour <= cap.per_day
    assert default_cap(OTHER) is None
    assert set(DEFAULT_CAPS) == set(MX_SUFFIXES.values())
