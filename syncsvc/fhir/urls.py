"""Whether a URL lies under a FHIR base: the boundary a bearer token never crosses."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from yarl import URL

#: Percent-decoding rounds applied before judging a segment: ``%252e`` is ``.`` after two.
_DECODE_ROUNDS = 4


def _ambiguous_path(raw_path: str) -> bool:
    # A dot segment (plain or percent-encoded, once or more), an encoded slash, a path parameter
    # (``..;`` is ``..`` to Tomcat and Spring) or a control character makes the path a server or
    # proxy acts on differ from the one checked here, so such URLs are refused. FHIR paths are
    # plain: a type, an id ([A-Za-z0-9.-]), an operation.
    lowered = raw_path.lower()
    if "%2f" in lowered or "%5c" in lowered or "%25" in lowered or "\\" in raw_path:
        return True
    for segment in raw_path.split("/"):
        decoded = segment
        for _ in range(_DECODE_ROUNDS):
            decoded = unquote(decoded)
        if ";" in decoded or any(ord(c) < 0x20 or ord(c) >= 0x7F for c in decoded):
            return True
        if decoded.strip() in (".", "..") or (segment != decoded and "." in decoded):
            return True
    return False


def is_under_base(url: str, base: str) -> bool:
    """Whether ``url`` is under ``base``: same scheme, host and port, path below the base path.

    The comparison is made on the URL as the HTTP client will send it (normalised by yarl), and
    URLs whose path could be read two ways are refused outright.
    """
    try:
        target, root = URL(url), URL(base)
    except (ValueError, TypeError):
        return False
    if not target.is_absolute() or target.user or target.password:
        return False
    if _ambiguous_path(urlsplit(url).path):
        return False
    if (target.scheme.lower(), target.host, target.explicit_port or target.port) != (
        root.scheme.lower(),
        root.host,
        root.explicit_port or root.port,
    ):
        return False
    base_path = root.path.rstrip("/")
    return target.path == base_path or target.path.startswith(base_path + "/")
