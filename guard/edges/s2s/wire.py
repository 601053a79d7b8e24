"""
What S2S streams put on the wire besides stanzas: stream headers, features,
stream errors and negotiation elements.  Pure functions from facts to bytes.
"""

from __future__ import annotations

import base64
import secrets
from xml.sax.saxutils import escape

from guard.core.vocabulary import (  # noqa: F401 - the streams read these as wire.NAME
    DIALBACK_FEATURE_NS, DIALBACK_NS, SASL_NS, SERVER_NS, STANZA_ERRORS_NS, STREAM_ERROR_CONDITIONS, STREAM_ERRORS_NS,
    STREAMS_NS, TLS_NS,
)


def quoteattr(value: str) -> str:
    """An attribute value in single quotes, escaped."""
    return "'" + escape(value, {"'": "&apos;", '"': "&quot;"}) + "'"


def new_stream_id() -> str:
    return secrets.token_hex(16)


def stream_header(sender: str | None, receiver: str | None, stream_id: str | None = None) -> bytes:
    """An opening <stream:stream> for a server stream, with the dialback namespace declared."""
    parts = [
        "<?xml version='1.0'?>",
        f"<stream:stream xmlns='{SERVER_NS}'",
        f" xmlns:stream='{STREAMS_NS}'",
        f" xmlns:db='{DIALBACK_NS}'",
    ]
    if sender:
        parts.append(f" from={quoteattr(sender)}")
    if receiver:
        parts.append(f" to={quoteattr(receiver)}")
    if stream_id:
        parts.append(f" id={quoteattr(stream_id)}")
    parts.append(" version='1.0'>")
    return "".join(parts).encode("utf-8")


STREAM_CLOSE = b"</stream:stream>"


def stream_error(condition: str, text: str | None = None) -> bytes:
    if condition not in STREAM_ERROR_CONDITIONS:
        condition = "undefined-condition"
    body = f"<{condition} xmlns='{STREAM_ERRORS_NS}'/>"
    if text:
        body += f"<text xmlns='{STREAM_ERRORS_NS}'>{escape(text)}</text>"
    return f"<stream:error>{body}</stream:error>".encode("utf-8")


def features_starttls_required() -> bytes:
    return (
        f"<stream:features><starttls xmlns='{TLS_NS}'><required/></starttls>"
        "</stream:features>"
    ).encode()


def features_authentication(external: bool, dialback: bool) -> bytes:
    body = ""
    if external:
        body += f"<mechanisms xmlns='{SASL_NS}'><mechanism>EXTERNAL</mechanism></mechanisms>"
    if dialback:
        body += f"<dialback xmlns='{DIALBACK_FEATURE_NS}'><errors/></dialback>"
    return f"<stream:features>{body}</stream:features>".encode()


def features_empty() -> bytes:
    return b"<stream:features/>"


STARTTLS = f"<starttls xmlns='{TLS_NS}'/>".encode()
PROCEED = f"<proceed xmlns='{TLS_NS}'/>".encode()
SASL_SUCCESS = f"<success xmlns='{SASL_NS}'/>".encode()


def sasl_failure(condition: str = "not-authorized") -> bytes:
    return f"<failure xmlns='{SASL_NS}'><{condition}/></failure>".encode()


def sasl_external_auth(authzid: str) -> bytes:
    encoded = base64.b64encode(authzid.encode("utf-8")).decode("ascii")
    return f"<auth xmlns='{SASL_NS}' mechanism='EXTERNAL'>{encoded}</auth>".encode()


def decode_sasl_external(text: str) -> str | None:
    """The authorization identity in an EXTERNAL <auth/>: '' for none ('=' or empty), None if garbled."""
    text = (text or "").strip()
    if text in ("", "="):
        return ""
    try:
        return base64.b64decode(text, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


def dialback_result(sender: str, receiver: str, key: str | None = None, verdict: str | None = None) -> bytes:
    attributes = f"from={quoteattr(sender)} to={quoteattr(receiver)}"
    if verdict:
        return f"<db:result {attributes} type={quoteattr(verdict)}/>".encode()
    return f"<db:result {attributes}>{escape(key or '')}</db:result>".encode()


def dialback_result_error(sender: str, receiver: str, condition: str, error_type: str = "cancel") -> bytes:
    """An XEP-0220 <db:result type='error'/>: the guard could not settle the request (its own condition)."""
    attributes = f"from={quoteattr(sender)} to={quoteattr(receiver)} type='error'"
    return (
        f"<db:result {attributes}><error type={quoteattr(error_type)}>"
        f"<{condition} xmlns='{STANZA_ERRORS_NS}'/></error></db:result>"
    ).encode()


def dialback_verify(sender: str, receiver: str, stream_id: str, key: str, verdict: str | None = None) -> bytes:
    attributes = f"from={quoteattr(sender)} to={quoteattr(receiver)} id={quoteattr(stream_id)}"
    if verdict:
        attributes += f" type={quoteattr(verdict)}"
    return f"<db:verify {attributes}>{escape(key)}</db:verify>".encode()
