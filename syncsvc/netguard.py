"""Where syncsvc's outbound requests may go: EHR endpoints only on public addresses.

A tenant's discovery document names the endpoints syncsvc then calls with codes, client secrets
and tokens. A hostile or compromised tenant could name ``http://127.0.0.1:…``, a cloud metadata
address or a host on the operator's private network (SSRF). Two checks stop that:

* :func:`check_endpoint`, when a URL is accepted (discovery, registration): a remote tenant's
  endpoints are https, and a literal address or ``localhost`` in them must be public. Only a
  loopback tenant (the sandbox, tests) may use plain http, and only on loopback.
* :class:`PublicOnlyResolver`, when a connection is opened: a host *name* must resolve to public
  addresses only, checked after resolution and before connecting, so a name that resolves
  differently later (DNS rebinding) is refused too. Literal addresses never reach a resolver;
  the first check covers them. Webhook delivery, whose URLs the operator configures and which
  may legitimately point inside the network, uses a client of its own with its own connection
  pool (:func:`syncsvc.http.create_webhook_client`), so a connection it opened is never reused
  for an EHR request.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

#: Cloud metadata services, named even though ``is_global`` already excludes their ranges: a
#: change in that definition must not quietly open them.
_REFUSED_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),  # link-local: AWS/GCP/Azure metadata
    ipaddress.ip_network("100.64.0.0/10"),  # shared address space: Alibaba metadata
    ipaddress.ip_network("fd00:ec2::/32"),  # AWS metadata over IPv6 (unique-local)
)


#: IPv6 ranges refused whole, whatever ``is_global`` says on this Python: local-use NAT64
#: (RFC 8215) translates into the operator's own IPv4 network.
_REFUSED_IPV6: tuple[ipaddress.IPv6Network, ...] = (ipaddress.IPv6Network("64:ff9b:1::/48"),)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches, if it carries one.

    IPv4-mapped ``::ffff:10.0.0.1``, well-known NAT64 ``64:ff9b::a00:1``, 6to4
    ``2002:7f00:1::`` and the deprecated IPv4-compatible ``::7f00:1`` all end up at an IPv4
    address; that address is what must be public. (Python 3.11 judges some of them global.)
    """
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


class NonPublicAddress(OSError):
    """A host name resolved to an address syncsvc does not send EHR traffic to."""


def is_public_address(address: str) -> bool:
    """Whether ``address`` is a global unicast address (not loopback, private, link-local…)."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local or any(ip in network for network in _REFUSED_IPV6):
            return False
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_public_address(str(embedded))
    if not ip.is_global or ip.is_multicast:
        return False
    return not any(ip in network for network in _REFUSED_NETWORKS)


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` is a loopback name or address (plain http is allowed only there)."""
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def endpoint_problem(url: str, *, loopback_tenant: bool) -> str | None:
    """Why ``url`` may not be one of a tenant's endpoints, or None if it may.

    ``loopback_tenant``: the tenant's FHIR base is on loopback (the sandbox, tests); its
    endpoints may then be plain http on loopback too. A remote tenant's endpoints must be https
    on a host that is a public address or a name (names are checked when resolved).
    """
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        return "is not an absolute http(s) URL"
    if is_loopback_host(host):
        return None if loopback_tenant else "is on this machine (loopback)"
    if parts.scheme != "https":
        return "must use https"
    if host.lower().endswith(".localhost") or (_literal(host) and not is_public_address(host)):
        return "is not a public address"
    return None


class PublicOnlyResolver(AbstractResolver):
    """A resolver that refuses host names resolving to non-public addresses.

    ``localhost`` may resolve to loopback (the sandbox); every other name must resolve to public
    addresses only.
    """

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host`` with the inner resolver, then refuse non-public answers."""
        results = await self._inner.resolve(host, port, family)
        addresses = [str(r["host"]) for r in results]
        if host.lower() == "localhost":
            allowed = all(is_loopback_host(a) for a in addresses)
        else:
            allowed = all(is_public_address(a) for a in addresses)
        if not allowed or not addresses:
            raise NonPublicAddress(f"{host} resolves to a non-public address; not connecting")
        return results

    async def close(self) -> None:
        """Close the inner resolver."""
        await self._inner.close()
