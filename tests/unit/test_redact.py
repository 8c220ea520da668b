"""Passwords never reach a log line or an error: redact_url hides every one in a URL."""

from __future__ import annotations

import pytest

from conveyor.backends import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:p@ss@h/0", "redis://user:***@h/0"),  # an unescaped @ in the password
        ("redis+sentinel://:pw@h1,h2/m/1?sentinel_password=spw&timeout=2",
         "redis+sentinel://:***@h1,h2/m/1?sentinel_password=***&timeout=2"),
        ("postgresql://u:pw@h/db?sslmode=require&password=x&sslpassword=y",
         "postgresql://u:***@h/db?sslmode=require&password=***&sslpassword=***"),
        ("unix:///run/redis.sock?db=2&password=z", "unix:///run/redis.sock?db=2&password=***"),
        ("redis://user@h/0?ssl_ca_certs=/a@b/ca.crt", "redis://user@h/0?ssl_ca_certs=/a@b/ca.crt"),
        ("sqlite:///jobs.db", "sqlite:///jobs.db"),
    ],
)  # fmt: skip
def test_every_password_in_a_url_is_hidden(url: str, shown: str) -> None:
    """Until 2026-12-07 a password given as a query option (libpq's password=,
    Sentinel's sentinel_password=) was shown as written."""
    assert redact_url(url) == shown
