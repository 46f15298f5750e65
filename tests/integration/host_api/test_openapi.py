"""``GET /openapi.json``: public, OpenAPI 3.1, and covering every ``/api/v1`` route."""

from __future__ import annotations

from typing import Any

import aiohttp

from syncsvc.vocabulary import WEBHOOK_EVENTS
from tests.integration.web.service import RunningService


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


async def test_document_covers_every_api_route(service: RunningService) -> None:
    async with (
        aiohttp.ClientSession(base_url=service.origin) as anonymous,
        anonymous.get("/openapi.json") as response,
    ):
        assert response.status == 200
        assert response.content_type == "application/json"
        document = await response.json()
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": service.origin}]
    assert document["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["apiKey"]["description"],
    }
    assert document["security"] == [{"apiKey": []}]

    registered = {
        (route.method.lower(), route.resource.canonical)
        for route in service.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/api/v1/")
        and route.method != "HEAD"
    }
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert registered, "no /api/v1 route found"
    assert registered <= documented, registered - documented
    assert ("delete", "/api/v1/connections/{connection_id}") in documented
    assert set(WEBHOOK_EVENTS) == set(document["webhooks"])
    assert "connection.scopes_changed" in document["webhooks"]

    schemas = document["components"]["schemas"]
    for ref in _refs(document):
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in schemas, ref
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation["responses"], (method, path)
            assert "401" in operation["responses"], (method, path)
            names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert names == {part[1:-1] for part in path.split("/") if part.startswith("{")}
