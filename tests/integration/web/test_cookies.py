"""Cookies of the patient pages are Secure whenever the public URL is https."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import aiohttp
from aiohttp import web

from syncsvc.connect.links import issue_connect_link
from syncsvc.directory.tenants import TenantSpec, register_tenant
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.services import Services
from syncsvc.settings import Settings
from syncsvc.vault import Vault
from syncsvc.web.app import create_app
from syncsvc.web.keys import SERVICES, SIGNER
from tests.fixtures.sandbox import GENERIC_TENANT

PUBLIC = "https://sync.example.org"


async def test_https_public_url_makes_every_cookie_secure(
    db_url: str, tmp_path: Path, sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    settings = Settings.for_tests(data_dir=tmp_path, database_url=db_url, public_url=PUBLIC)
    app = create_app(Services(settings))
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        origin = f"http://127.0.0.1:{runner.addresses[0][1]}"
        now = dt.datetime.now(dt.UTC)
        spec = TenantSpec(
            name="generic",
            fhir_base=sandbox.urls(GENERIC_TENANT).fhir_base,
            client_id="syncsvc-public",
            redirect_uri=f"{PUBLIC}/callback",
        )
        await register_tenant(
            app[SERVICES].sessionmaker, Vault.from_settings(settings), http, spec, now=now
        )
        async with app[SERVICES].sessionmaker.begin() as session:
            link = await issue_connect_link(
                session, app[SIGNER], settings, user_id="u-1", tenant_name="generic", now=now
            )
        token = link.url.split("link=", 1)[1]
        async with http.get(f"{origin}/connect", params={"link": token}) as page:
            assert page.status == 200
            form_cookie = page.cookies["syncsvc_form"]
            page_cookies = page.headers.getall("Set-Cookie")
        async with http.post(
            f"{origin}/connect/start",
            data={"link": token, "tenant": "generic", "csrf": form_cookie.value},
            headers={"Cookie": f"syncsvc_form={form_cookie.value}"},
            allow_redirects=False,
        ) as response:
            assert response.status == 303
            assert response.headers["Location"].startswith(sandbox.urls(GENERIC_TENANT).authorize)
            cookies = response.headers.getall("Set-Cookie")
            assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
        async with http.get(f"{origin}/no-such-page", headers={"Accept": "text/html"}) as missing:
            assert missing.status == 404
            # Error pages carry the same headers as every other answer.
            assert missing.headers["X-Frame-Options"] == "DENY"
            assert "Strict-Transport-Security" in missing.headers
    finally:
        await runner.cleanup()
    assert {c.split("=", 1)[0] for c in cookies} == {"syncsvc_browser", "syncsvc_session"}
    [form] = page_cookies
    for cookie in [*cookies, form]:
        attributes = [part.strip().lower() for part in cookie.split(";")]
        assert "secure" in attributes
        assert "httponly" in attributes
        strict = cookie.startswith("syncsvc_form=")
        assert ("samesite=strict" if strict else "samesite=lax") in attributes
