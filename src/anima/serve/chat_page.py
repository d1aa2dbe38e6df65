"""``GET /chat``: the browser chat page (static/chat.html, one file with inline CSS and JS; ``GET /`` redirects).

Why it holds no secret: the page is the same bytes for everyone and is served without the API key, so it can
load at all on a keyed server; the page then asks for the key, keeps it in the tab's ``sessionStorage`` and sends
it as ``Authorization: Bearer`` on its API calls, which the key check guards like any other client's. Serving
the key inside the page (even on loopback only) would hand it to anything that can fetch the page.

The Content-Security-Policy lets the page talk to this server only: no CDN, no external request, no framing.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse

#: Paths served without the API key: the liveness probe and the page itself (it holds no secret).
PUBLIC_PATHS = frozenset({"/health", "/", "/chat"})
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@lru_cache(maxsize=1)
def page_html() -> str:
    """The page, read once from the installed package data."""
    return resources.files("anima.serve").joinpath("static/chat.html").read_text(encoding="utf-8")


def chat_page_routes() -> APIRouter:
    router = APIRouter()

    @router.api_route("/chat", methods=["GET", "HEAD"], include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(page_html(), headers=PAGE_HEADERS)

    @router.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/chat", status_code=307)

    return router
