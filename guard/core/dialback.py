"""
Server dialback keys (XEP-0185): HMAC-SHA256 over the receiving domain, the
originating domain and the stream ID, keyed with the hex SHA-256 of a secret.
"""

from __future__ import annotations

import hashlib
import hmac


def dialback_key(secret: str, receiving: str, originating: str, stream_id: str) -> str:
    """The key the originating server sends in <db:result/> on stream ``stream_id``."""
    keying = hashlib.sha256(secret.encode("utf-8")).hexdigest().encode("ascii")
    text = " ".join((receiving, originating, stream_id)).encode("utf-8")
    return hmac.new(keying, text, hashlib.sha256).hexdigest()


def key_is_ours(secret: str, receiving: str, originating: str, stream_id: str, key: str) -> bool:
    """Whether ``key`` is the one we would have issued (constant-time comparison)."""
    expected = dialback_key(secret, receiving, originating, stream_id)
    return hmac.compare_digest(expected.encode("ascii"), (key or "").strip().encode("utf-8", "replace"))
