"""The web dashboard at /ui: static HTML, JS and CSS (no build step, nothing fetched from
elsewhere). The page signs in with a tenant API key kept in the tab's sessionStorage and
calls the same JSON API as any client, with the Bearer header."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from service.errors import NotFound

router = APIRouter(prefix="/ui", tags=["ui"], include_in_schema=False)
STATIC = Path(__file__).parent / "static"
JS = "text/javascript; charset=utf-8"
ASSETS = {
    "dom.js": JS,
    "charts.js": JS,
    "session.js": JS,
    "job.js": JS,
    "files.js": JS,
    "create.js": JS,
    "playground.js": JS,
    "usage.js": JS,
    "app.js": JS,
    "style.css": "text/css; charset=utf-8",
}
# Scripts and styles only from this origin, no inline script, no framing: even a tenant
# string that slipped past the page's escaping could not run.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@router.get("")
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/")


@router.get("/")
def ui_index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)


@router.get("/static/{name}")
def ui_asset(name: str) -> FileResponse:
    if name not in ASSETS:  # a fixed list: no path from the request reaches the disk
        raise NotFound(f"No such asset: {name!r}.")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers=HEADERS)
