"""SMART discovery: where a FHIR base's authorization server lives and what it supports.

Reads ``{base}/.well-known/smart-configuration`` and falls back to the CapabilityStatement's
``oauth-uris`` extension (SMART App Launch 2.x, section "Conformance"), which older Cerner and Epic
deployments still rely on. The result is validated here so nothing downstream sees a relative or
plain-http URL for a remote host.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import orjson

from syncsvc.errors import DiscoveryError
from syncsvc.http import BodyTooLarge, describe_network_error, read_body
from syncsvc.netguard import endpoint_problem, is_loopback_host

OAUTH_URIS_EXTENSION = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
#: Cerner's published smart-configuration omits ``code_challenge_methods_supported`` although
#: its servers accept S256; the SMART spec makes S256 mandatory for servers, so absence means S256.
ASSUMED_CHALLENGE_METHODS = ("S256",)
MAX_DOCUMENT_BYTES = 2 * 1024 * 1024

Source = Literal["well-known", "capability-statement"]


@dataclass(frozen=True)
class SmartConfiguration:
    """What a FHIR base's SMART authorization server offers, as discovered."""

    fhir_base: str
    authorization_endpoint: str
    token_endpoint: str
    source: Source
    issuer: str | None = None
    jwks_uri: str | None = None
    revocation_endpoint: str | None = None
    introspection_endpoint: str | None = None
    capabilities: tuple[str, ...] = ()
    #: ``None`` when the server does not say (then nothing can be concluded from it).
    scopes_supported: tuple[str, ...] | None = None
    code_challenge_methods: tuple[str, ...] = ASSUMED_CHALLENGE_METHODS
    code_challenge_methods_advertised: bool = False
    token_endpoint_auth_methods: tuple[str, ...] = ()
    #: Resource types the CapabilityStatement lists, with the search parameters of each.
    resource_search_params: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: RFC 9207: the server names itself (``iss``) in every authorization response.
    authorization_response_iss_parameter_supported: bool = False
    #: The CapabilityStatement lists the ``Patient/[id]/$everything`` operation.
    patient_everything: bool = False

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form for storage."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SmartConfiguration:
        """Inverse of :meth:`to_json`."""
        tuples = (
            "capabilities",
            "code_challenge_methods",
            "token_endpoint_auth_methods",
        )
        values = dict(data)
        for name in tuples:
            values[name] = tuple(values.get(name) or ())
        if values.get("scopes_supported") is not None:
            values["scopes_supported"] = tuple(values["scopes_supported"])
        values["resource_search_params"] = {
            k: tuple(v) for k, v in (values.get("resource_search_params") or {}).items()
        }
        return cls(**values)

    def supports_search_param(self, resource_type: str, param: str) -> bool:
        """Whether the CapabilityStatement lists ``param`` for ``resource_type``."""
        return param in self.resource_search_params.get(resource_type, ())


def normalise_base(url: str) -> str:
    """A FHIR base as syncsvc stores and compares it: no trailing slash, no query or fragment."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DiscoveryError(f"'{url}' is not an absolute http(s) URL")
    if parts.query or parts.fragment:
        raise DiscoveryError(f"A FHIR base has no query or fragment: '{url}'")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def validate_endpoint(url: Any, what: str, *, loopback_tenant: bool) -> str:
    """``url`` if it may be a tenant's endpoint (see :func:`~syncsvc.netguard.endpoint_problem`).

    ``loopback_tenant``: the tenant's FHIR base is on loopback, so plain http on loopback is
    allowed; a remote tenant's endpoints must be https on public addresses.
    """
    if not isinstance(url, str) or not url:
        raise DiscoveryError(f"The server's {what} is missing")
    problem = endpoint_problem(url, loopback_tenant=loopback_tenant)
    if problem is not None:
        raise DiscoveryError(f"The server's {what} {problem}: '{url}'")
    return url


def _optional_endpoint(url: Any, what: str, *, loopback_tenant: bool) -> str | None:
    if url in (None, ""):
        return None
    return validate_endpoint(url, what, loopback_tenant=loopback_tenant)


def _str_tuple(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value if isinstance(item, str))


async def _get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    headers = {"Accept": "application/json, application/fhir+json"}
    async with http.get(url, headers=headers, allow_redirects=False) as response:
        try:
            body = await read_body(response.content, MAX_DOCUMENT_BYTES)
        except BodyTooLarge as exc:
            raise DiscoveryError(f"{url} answered with an oversized document") from exc
        if response.status != 200:
            return response.status, None
        try:
            return 200, orjson.loads(body)
        except orjson.JSONDecodeError:
            return 200, None


def _is_loopback_base(base: str) -> bool:
    return is_loopback_host(urlsplit(base).hostname)


def configuration_problem(config: SmartConfiguration) -> str | None:
    """Why a stored configuration's endpoints may no longer be used, or None.

    Documents stored before the endpoint rules tightened are checked again when read.
    """
    local = _is_loopback_base(config.fhir_base)
    named = {
        "FHIR base": config.fhir_base,
        "authorization endpoint": config.authorization_endpoint,
        "token endpoint": config.token_endpoint,
        "jwks_uri": config.jwks_uri,
        "revocation endpoint": config.revocation_endpoint,
        "introspection endpoint": config.introspection_endpoint,
    }
    for what, url in named.items():
        problem = url and endpoint_problem(url, loopback_tenant=local)
        if problem:
            return f"The {what} {problem}: '{url}'"
    return None


def parse_smart_configuration(base: str, doc: Any) -> SmartConfiguration:
    """Validate a ``.well-known/smart-configuration`` document."""
    if not isinstance(doc, dict):
        raise DiscoveryError("The smart-configuration document is not a JSON object")
    local = _is_loopback_base(base)
    advertised = _str_tuple(doc.get("code_challenge_methods_supported"))
    if "code_challenge_methods_supported" in doc and "S256" not in advertised:
        raise DiscoveryError("The server does not support PKCE with S256, which SMART requires")
    scopes = doc.get("scopes_supported")
    return SmartConfiguration(
        fhir_base=base,
        source="well-known",
        issuer=_optional_endpoint(doc.get("issuer"), "issuer", loopback_tenant=local),
        jwks_uri=_optional_endpoint(doc.get("jwks_uri"), "jwks_uri", loopback_tenant=local),
        authorization_endpoint=validate_endpoint(
            doc.get("authorization_endpoint"), "authorization endpoint", loopback_tenant=local
        ),
        token_endpoint=validate_endpoint(
            doc.get("token_endpoint"), "token endpoint", loopback_tenant=local
        ),
        revocation_endpoint=_optional_endpoint(
            doc.get("revocation_endpoint"), "revocation endpoint", loopback_tenant=local
        ),
        introspection_endpoint=_optional_endpoint(
            doc.get("introspection_endpoint"), "introspection endpoint", loopback_tenant=local
        ),
        capabilities=_str_tuple(doc.get("capabilities")),
        scopes_supported=_str_tuple(scopes) if isinstance(scopes, list) else None,
        code_challenge_methods=advertised or ASSUMED_CHALLENGE_METHODS,
        code_challenge_methods_advertised=bool(advertised),
        token_endpoint_auth_methods=_str_tuple(doc.get("token_endpoint_auth_methods_supported")),
        authorization_response_iss_parameter_supported=(
            doc.get("authorization_response_iss_parameter_supported") is True
        ),
    )


def _oauth_uris(statement: dict[str, Any]) -> dict[str, str]:
    uris: dict[str, str] = {}
    rests = statement.get("rest")
    for rest in rests if isinstance(rests, list) else []:
        security = rest.get("security") if isinstance(rest, dict) else None
        extensions = security.get("extension") if isinstance(security, dict) else None
        for ext in extensions if isinstance(extensions, list) else []:
            if not isinstance(ext, dict) or ext.get("url") != OAUTH_URIS_EXTENSION:
                continue
            for inner in ext.get("extension") or []:
                if isinstance(inner, dict) and isinstance(inner.get("valueUri"), str):
                    uris[str(inner.get("url"))] = inner["valueUri"]
    return uris


def resource_search_params(statement: Any) -> dict[str, tuple[str, ...]]:
    """Resource types of a CapabilityStatement with their search parameter names."""
    found: dict[str, tuple[str, ...]] = {}
    if not isinstance(statement, dict):
        return found
    for rest in statement.get("rest") or []:
        if not isinstance(rest, dict):
            continue
        for resource in rest.get("resource") or []:
            if not isinstance(resource, dict) or not isinstance(resource.get("type"), str):
                continue
            params = resource.get("searchParam") or []
            found[resource["type"]] = tuple(
                p["name"] for p in params if isinstance(p, dict) and isinstance(p.get("name"), str)
            )
    return found


#: The canonical definition of Patient/$everything (FHIR R4); servers also name it by name.
PATIENT_EVERYTHING = "http://hl7.org/fhir/OperationDefinition/Patient-everything"


def advertises_patient_everything(statement: Any) -> bool:
    """Whether a CapabilityStatement lists ``$everything`` on Patient."""
    if not isinstance(statement, dict):
        return False
    for rest in statement.get("rest") or []:
        if not isinstance(rest, dict):
            continue
        for resource in rest.get("resource") or []:
            if not isinstance(resource, dict) or resource.get("type") != "Patient":
                continue
            for operation in resource.get("operation") or []:
                if not isinstance(operation, dict):
                    continue
                name, definition = operation.get("name"), operation.get("definition")
                if name == "everything" or (
                    isinstance(definition, str) and definition.startswith(PATIENT_EVERYTHING)
                ):
                    return True
    return False


def parse_capability_statement(base: str, statement: Any) -> SmartConfiguration:
    """Endpoints from a CapabilityStatement's ``oauth-uris`` extension (the pre-2.0 way)."""
    if not isinstance(statement, dict) or statement.get("resourceType") != "CapabilityStatement":
        raise DiscoveryError("The server's metadata is not a FHIR CapabilityStatement")
    uris = _oauth_uris(statement)
    local = _is_loopback_base(base)
    return SmartConfiguration(
        fhir_base=base,
        source="capability-statement",
        authorization_endpoint=validate_endpoint(
            uris.get("authorize"), "authorization endpoint", loopback_tenant=local
        ),
        token_endpoint=validate_endpoint(
            uris.get("token"), "token endpoint", loopback_tenant=local
        ),
        revocation_endpoint=_optional_endpoint(
            uris.get("revoke"), "revocation endpoint", loopback_tenant=local
        ),
        introspection_endpoint=_optional_endpoint(
            uris.get("introspect"), "introspection endpoint", loopback_tenant=local
        ),
        resource_search_params=resource_search_params(statement),
        patient_everything=advertises_patient_everything(statement),
    )


async def discover(http: aiohttp.ClientSession, fhir_base: str) -> SmartConfiguration:
    """Discover a FHIR base's SMART configuration (well-known first, CapabilityStatement after)."""
    base = normalise_base(fhir_base)
    try:
        status, doc = await _get_json(http, f"{base}/.well-known/smart-configuration")
        meta_status, statement = await _get_json(http, f"{base}/metadata")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DiscoveryError(f"Could not reach {base}: {describe_network_error(exc)}") from exc
    search_params = resource_search_params(statement) if meta_status == 200 else {}
    everything = meta_status == 200 and advertises_patient_everything(statement)
    if status == 200 and doc is not None:
        config = parse_smart_configuration(base, doc)
        return SmartConfiguration(
            **{
                **config.__dict__,
                "resource_search_params": search_params,
                "patient_everything": everything,
            }
        )
    if meta_status == 200 and statement is not None:
        return parse_capability_statement(base, statement)
    raise DiscoveryError(
        f"{base} publishes neither .well-known/smart-configuration (HTTP {status}) "
        f"nor a CapabilityStatement with SMART endpoints (HTTP {meta_status})"
    )
