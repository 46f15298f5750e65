"""Opaque, signed resume cursors of the resource change feed.

A cursor records, per connection, the last ``seq`` a host application has been given, plus the
scope it was issued for (one connection, or one user across connections) and the type filter.
It is an HMAC-signed token (itsdangerous, keyed with the link-signing key under a salt of its
own), so it cannot be forged or edited, and a cursor issued for one scope is refused in any
other: user A's cursor never opens user B's feed, whatever ids are put in the URL. Cursors do
not expire; ``seq`` only grows, so an old cursor simply returns everything changed since.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from itsdangerous import BadData, URLSafeSerializer

from syncsvc.errors import BadRequest

CURSOR_VERSION = 1
#: Far above a cursor over dozens of connections, well below a server's request-line limit.
MAX_CURSOR_LENGTH = 4096
_SALT = "syncsvc/resource-cursor"


def connection_scope(connection_id: str) -> str:
    """The scope of one connection's feed."""
    return f"connection:{connection_id}"


def user_scope(user_id: str) -> str:
    """The scope of one user's feed across their connections."""
    return f"user:{user_id}"


@dataclass(frozen=True)
class FeedCursor:
    """Where a host application stands in one feed."""

    scope: str
    #: The type filter, sorted; empty means every type.
    types: tuple[str, ...] = ()
    #: The last seq given out, per connection; a missing connection starts from the beginning.
    positions: Mapping[str, int] = field(default_factory=dict)


class CursorCodec:
    """Signs and reads cursors."""

    def __init__(self, key: str) -> None:
        self._serializer = URLSafeSerializer(key, salt=_SALT)

    def encode(self, cursor: FeedCursor) -> str:
        """The opaque token of ``cursor``."""
        payload = {
            "v": CURSOR_VERSION,
            "s": cursor.scope,
            "t": list(cursor.types),
            "p": {cid: seq for cid, seq in sorted(cursor.positions.items()) if seq > 0},
        }
        token = self._serializer.dumps(payload)
        return token if isinstance(token, str) else token.decode("ascii")

    def decode(self, token: str, *, scope: str) -> FeedCursor:
        """The cursor of a valid token issued for ``scope``; BadRequest otherwise.

        A forged, edited, truncated or foreign cursor gets the same answer, so the answer says
        nothing about whose feed a cursor belonged to.
        """
        invalid = BadRequest(
            "The 'since' cursor is not valid for this feed. Use a cursor this feed returned, "
            "or leave 'since' out to read from the beginning.",
            reason="invalid_cursor",
        )
        if not token or len(token) > MAX_CURSOR_LENGTH:
            raise invalid
        try:
            payload = self._serializer.loads(token)
        except (BadData, ValueError, UnicodeError) as exc:
            raise invalid from exc
        cursor = _parse(payload)
        if cursor is None or cursor.scope != scope:
            raise invalid
        return cursor


def _parse(payload: Any) -> FeedCursor | None:
    if not isinstance(payload, dict) or payload.get("v") != CURSOR_VERSION:
        return None
    scope, types, positions = payload.get("s"), payload.get("t"), payload.get("p")
    if not isinstance(scope, str) or not isinstance(types, list) or not isinstance(positions, dict):
        return None
    if not all(isinstance(t, str) for t in types):
        return None
    clean: dict[str, int] = {}
    for cid, seq in positions.items():
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            return None
        clean[str(cid)] = seq
    return FeedCursor(scope=scope, types=tuple(types), positions=clean)


def normalise_types(types: Sequence[str]) -> tuple[str, ...]:
    """A type filter in its canonical form (sorted, without duplicates)."""
    return tuple(sorted(set(types)))
