"""A scripted patient: a cookie-keeping browser that connects a record through the sandbox.

The demo's headless connection and the launch tests use it to walk the real pages over HTTP:
open the connect link, press "Connect" for a provider, follow the redirects to the EHR, fill the
sandbox's login and consent form (or let auto-approve answer), and follow the EHR's redirect back
to syncsvc's callback. It refuses any URL that is not on a loopback address, so it cannot wander
off to the internet, and it follows a bounded number of redirects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from types import TracebackType
from typing import Self
from urllib.parse import urljoin, urlsplit

import aiohttp

from syncsvc.http import read_body
from syncsvc.netguard import is_loopback_host

MAX_STEPS = 12
PAGE_LIMIT_BYTES = 1024 * 1024


@dataclass
class Form:
    """One HTML form: where it posts and its fields (radio groups keep the checked value)."""

    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    has_password: bool = False


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(values.get("action", ""), values.get("method", "get").lower()))
        elif tag == "input" and self.forms:
            form, name = self.forms[-1], values.get("name")
            if values.get("type") == "password":
                form.has_password = True
            if not name:
                return
            if values.get("type") == "radio" and "checked" not in values:
                form.fields.setdefault(name, values.get("value", ""))
                return
            form.fields[name] = values.get("value", "")


def parse_forms(html: str) -> list[Form]:
    """The forms of an HTML page."""
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


@dataclass(frozen=True)
class PageResult:
    """Where the walk ended: the last page's URL, status and text."""

    url: str
    status: int
    body: str


class PatientWalkError(RuntimeError):
    """The scripted walk met something it cannot handle (a page without the expected form)."""


class ScriptedPatient:
    """A browser with a cookie jar, driven through the connect flow."""

    def __init__(
        self,
        *,
        username: str,
        password: str = "portal",  # noqa: S107 - the sandbox's documented test password
        decision: str = "approve",
        timeout_seconds: float = 30,
    ) -> None:
        self.username = username
        self.password = password
        self.decision = decision
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._http: aiohttp.ClientSession | None = None
        self.visited: list[str] = []

    async def __aenter__(self) -> Self:
        # unsafe=True: keep cookies for IP-address hosts such as 127.0.0.1.
        self._http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=self._timeout
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._http is not None:
            await self._http.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        """The browser's HTTP client (with its cookies)."""
        if self._http is None:
            raise RuntimeError("use ScriptedPatient as an async context manager")
        return self._http

    def _check(self, url: str) -> str:
        if not is_loopback_host(urlsplit(url).hostname):
            raise PatientWalkError(f"refusing to visit a non-loopback URL: {url}")
        self.visited.append(url)
        return url

    async def _request(
        self, method: str, url: str, data: dict[str, str] | None = None
    ) -> tuple[int, str, str | None]:
        async with self.http.request(
            method, self._check(url), data=data, allow_redirects=False
        ) as response:
            body = (await read_body(response.content, PAGE_LIMIT_BYTES)).decode("utf-8", "replace")
            location = response.headers.get("Location")
            return response.status, body, urljoin(url, location) if location else None

    async def open(self, url: str, *, stop_before: str | None = None) -> PageResult:
        """GET ``url`` and follow redirects and the EHR's login form to the end of the walk.

        With ``stop_before``, a redirect to a URL starting with it is not followed: the result
        has that URL and status 303, so a test can inspect or alter things first.
        """
        return await self._walk("get", url, None, stop_before)

    async def submit(
        self, page_url: str, form: Form, *, stop_before: str | None = None, **overrides: str
    ) -> PageResult:
        """Submit ``form`` (found on ``page_url``) with ``overrides`` and walk on."""
        target = urljoin(page_url, form.action or page_url)
        return await self._walk(form.method, target, {**form.fields, **overrides}, stop_before)

    async def connect(
        self, link_url: str, *, provider: str | None = None, stop_before: str | None = None
    ) -> PageResult:
        """Open a connect link, choose ``provider`` (or the first), and finish the launch."""
        page = await self.open(link_url)
        forms = [f for f in parse_forms(page.body) if "tenant" in f.fields]
        if provider is not None:
            forms = [f for f in forms if f.fields.get("tenant") == provider]
        if page.status != 200 or not forms:
            return page
        return await self.submit(page.url, forms[0], stop_before=stop_before)

    async def _walk(
        self, method: str, url: str, data: dict[str, str] | None, stop_before: str | None
    ) -> PageResult:
        for _ in range(MAX_STEPS):
            status, body, location = await self._request(method.upper(), url, data)
            if location is not None and status in (301, 302, 303, 307, 308):
                if stop_before is not None and location.startswith(stop_before):
                    return PageResult(url=location, status=303, body="")
                method, url, data = "get", location, None
                continue
            login = next((f for f in parse_forms(body) if f.has_password), None)
            if status == 200 and login is not None:
                fields = {
                    **login.fields,
                    "username": self.username,
                    "password": self.password,
                    "decision": self.decision,
                }
                method, url, data = login.method, urljoin(url, login.action or url), fields
                continue
            return PageResult(url=url, status=status, body=body)
        raise PatientWalkError(f"gave up after {MAX_STEPS} steps at {url}")
