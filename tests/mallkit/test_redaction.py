"""What the log redaction replaces, and what it leaves alone."""

from __future__ import annotations

import logging

from mallkit.telemetry import REDACTED, install_redaction, redact, register_secrets


def test_secret_shapes_are_replaced_and_ordinary_text_is_kept():
    register_secrets(["a-registered-secret-value"])
    cases = {
        "GET /sns/jscode2session?appid=wx1&secret=abc&js_code=alice%23x&grant_type=authorization_code":
            ["abc", "alice%23x"],
        '{"accessToken": "t0k3n", "session_key": "sk==", "code": "c0de"}': ["t0k3n", "sk==", "c0de"],
        "authorization: Bearer abc.def.ghi": ["abc.def.ghi"],
        "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtIn0.c2lnbmF0dXJl seen": ["eyJhbGciOiJIUzI1NiJ9"],
        "key -----BEGIN PRIVATE KEY-----\nMIIEv\n-----END PRIVATE KEY----- loaded": ["MIIEv"],
        "connecting to nats://mall:s3cr3t@nats:4222": ["s3cr3t"],
        "configured with a-registered-secret-value": ["a-registered-secret-value"],
    }
    for text, secrets in cases.items():
        out = redact(text)
        assert REDACTED in out, text
        assert not any(s in out for s in secrets), out
    for kept in ("errcode=40029 for orders/3", "outbox delivery to points failed (attempt 2)", "member members/42"):
        assert redact(kept) == kept


def test_every_record_is_redacted_whatever_handler_reads_it(caplog):
    install_redaction()
    caplog.set_level(logging.INFO)
    logging.getLogger("some.library").info("calling %s", "https://api.example/x?access_token=SECRET123")
    try:
        raise RuntimeError("failed for url https://api.example/x?secret=SECRET456")
    except RuntimeError:
        logging.getLogger("some.library").exception("boom")
    text = caplog.text
    assert "SECRET123" not in text and "SECRET456" not in text and REDACTED in text
    assert logging.getLogger("httpx").getEffectiveLevel() >= logging.WARNING
