"""The web console at `/ui`: server-rendered page shells and the plain JavaScript they load.

The pages hold no data: their scripts read the public API (`/api/...`, the SSE streams) with the
token the person entered, like any other client, so the pages and their files are open and need
no build step (everything ships as package data).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

HERE = Path(__file__).resolve().parent
STATIC_PATH = "/ui/static"

# Each page: its path, its title and the script (static/<page>.js) that fills it.
PAGES: dict[str, tuple[str, str]] = {
    "/ui": ("executions", "Executions"),
    "/ui/executions": ("executions", "Executions"),
    "/ui/executions/{execution_id}": ("execution", "Execution"),
    "/ui/catalog": ("catalog", "Catalog"),
    "/ui/catalog/{path:path}": ("playbook", "Playbook"),
    "/ui/registry": ("registry", "Registry"),
}
CONSOLE_PAGES = tuple(PAGES)

templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)


def _page(script: str, title: str) -> Callable[[Request], Awaitable[HTMLResponse]]:
    async def page(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        context = {"script": script, "title": title, "root": root, "static": root + STATIC_PATH}
        return templates.TemplateResponse(request, "page.html", context)

    page.__name__ = f"console_{script}"
    return page


for _path, (_script, _title) in PAGES.items():
    router.add_api_route(_path, _page(_script, _title), methods=["GET"], response_class=HTMLResponse)


def install(app: FastAPI) -> None:
    """The pages, and their scripts and styles under `/ui/static`."""
    app.router.routes.extend(router.routes)
    app.mount(STATIC_PATH, StaticFiles(directory=HERE / "static"), name="ui-static")
