"""GET /: the playground page, one self-contained HTML file (no build step, nothing external)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(tags=["playground"])

PAGE = Path(__file__).resolve().parent.parent / "static" / "playground.html"

# The page loads nothing from anywhere and talks only to this server.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


@router.get("/", include_in_schema=False)
async def playground() -> FileResponse:
    """The playground: sample and score from a browser. Open without an API key."""
    return FileResponse(PAGE, media_type="text/html; charset=utf-8", headers=HEADERS)
