"""Whether a URL lies under a FHIR base: the boundary a bearer token never crosses."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from yarl import URL


def _ambiguous_path(raw_path: str) -> bool:
    # A dot segment (plain or percent-encoded) or an encoded slash makes the path the HTTP client
    # sends differ from the one checked here (it resolves them), so such URLs are refused.
    lowered = raw_path.lower()
    if "%2f" in lowered or "%5c" in lowered or "\\" in raw_path:
        return True
    return any(unquote(segment) in (".", "..") for segment in raw_path.split("/"))


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
