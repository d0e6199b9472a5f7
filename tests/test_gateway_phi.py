"""PHI-free logging helpers: UIDs become stable short hashes, everything else is untouched."""

from __future__ import annotations

import logging

from clients.gateway.phi import RedactingFilter, redact, uid_tag


def test_uid_tag_is_stable_short_and_not_the_uid() -> None:
    uid = "1.2.826.0.1.3680043.8.498.12345678901234567890"
    assert uid_tag(uid) == uid_tag(uid) and uid_tag(uid).startswith("uid:")
    assert len(uid_tag(uid)) == 16 and "3680043" not in uid_tag(uid)
    assert uid_tag(uid) != uid_tag(uid + "1")


def test_redact_replaces_uids_but_not_addresses_or_numbers() -> None:
    uid = "1.2.840.113619.2.55.3.604688119.868.1249534422.315"
    text = f"stored {uid} from PACS@127.0.0.1:104 in 0.25 s (v1.10.1)"
    out = redact(text)
    assert uid not in out and uid_tag(uid) in out
    assert "127.0.0.1:104" in out and "0.25 s" in out and "v1.10.1" in out


def test_filter_redacts_formatted_messages_and_tracebacks() -> None:
    uid = "2.25.329800735698586629295641978511506172918"
    record = logging.LogRecord("pynetdicom", logging.ERROR, __file__, 1,
                               "Affected SOP Instance UID: %s", (uid,), None)
    try:
        raise ValueError(f"bad element in {uid}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    formatted = logging.Formatter().format(record)
    assert uid not in formatted and uid_tag(uid) in formatted


def test_library_warnings_lose_their_text() -> None:
    text = ("/x/pydicom/valuerep.py:440: UserWarning: Invalid value for VR PN: "
            "'Quillfeather^Ottoline'\n  warn_and_log(msg)")
    record = logging.LogRecord("py.warnings", logging.WARNING, __file__, 1, "%s", (text,), None)
    assert RedactingFilter().filter(record)
    message = record.getMessage()
    assert "Quillfeather" not in message
    assert message.startswith("/x/pydicom/valuerep.py:440: UserWarning")
