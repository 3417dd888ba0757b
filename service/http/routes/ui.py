"""/ui: the attention explorer, served from the package's static files (works offline)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.errors import NotFound

STATIC_DIR = Path(__file__).resolve().parent.parent.parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/ui")
async def ui() -> FileResponse:
    return FileResponse(STATIC_DIR / "ui.html", media_type="text/html")


@router.get("/ui/static/{name}")
async def ui_static(name: str) -> FileResponse:
    path = (STATIC_DIR / name).resolve()
    if path.parent != STATIC_DIR or not path.is_file():
        raise NotFound(f"no file {name!r} under /ui/static")
    return FileResponse(path)
