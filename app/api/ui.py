"""``/ui``: the analytics page — the static files of ``app/ui``, read once at start.

The page holds no data: the browser fetches everything from ``/analytics/*`` (with the
user's ``ANALYTICS_TOKEN``), so the page itself is served without one. Its URLs are
relative (``app.js``, ``../analytics/search``), so ``/ui`` redirects to ``/ui/`` with a
relative ``Location`` and the page also works behind a reverse proxy's path prefix. The
Content-Security-Policy allows nothing but the page's own files and API: stored prompts
are hostile input, and even a rendering mistake could not run a script or send data away.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException, Request, Response

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
MEDIA_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
}


def load_page() -> dict[str, tuple[bytes, str]]:
    """The page's files by name, with their media types (``importlib.resources`` finds them
    in a checkout, an installed package and the PyInstaller bundle alike)."""
    folder = resources.files("app").joinpath("ui")
    files: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        media_type = MEDIA_TYPES.get(entry.name.rpartition(".")[2])
        if media_type is not None and entry.is_file():
            files[entry.name] = (entry.read_bytes(), media_type)
    if "index.html" not in files:
        raise RuntimeError(f"the analytics page is missing from {folder}")
    return files


def create_ui_router() -> APIRouter:
    files = load_page()
    router = APIRouter(include_in_schema=False)

    def answer(name: str) -> Response:
        found = files.get(name)
        if found is None:
            raise HTTPException(404, detail=f"no file {name} in the analytics page")
        content, media_type = found
        return Response(content, media_type=media_type, headers=HEADERS)

    @router.api_route("/ui", methods=["GET", "HEAD"])
    def redirect(request: Request) -> Response:
        query = request.url.query
        location = "ui/" + ("?" + query if query else "")
        return Response(status_code=307, headers={**HEADERS, "Location": location})

    @router.api_route("/ui/", methods=["GET", "HEAD"])
    def index() -> Response:
        return answer("index.html")

    @router.api_route("/ui/{name}", methods=["GET", "HEAD"])
    def asset(name: str) -> Response:
        return answer(name)

    return router
