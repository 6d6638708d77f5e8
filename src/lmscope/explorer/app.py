"""The explorer's web app: ``create_app(root)`` gives a FastAPI app over the run folders under ``root``.

Pages (HTML):  /   /runs/{run_id}   /runs/{run_id}/units/{index}   /runs/{run_id}/report.html
API (JSON):    /api/runs   /api/runs/{run_id}/units/{index}   POST .../activations   POST .../steer
Add ``?export=1`` to any page for its self-contained version (what ``lmscope export`` writes).

The app only reads run folders. Run ids are looked up in the catalog made by scanning ``root``; unit indices
are integers checked against the run; the prompt has a length limit. Errors come back as a short HTML page
(or JSON under /api/), never a traceback.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from . import pages
from .data import Catalog, NotFound, Run, Units, UnitsCache, read_json_file
from .live import MAX_PROMPT_CHARS, InputError, LiveModel, UnitRef, check_prompt, steer, unit_activations

log = logging.getLogger("lmscope.explorer")
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]", "testserver"]
PER_PAGE = 50
# Served pages run only their own inline script and load nothing from elsewhere; saved reports get none.
PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
    "connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'self'"
)
REPORT_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"


class TextIn(BaseModel):
    text: str = Field(max_length=MAX_PROMPT_CHARS * 4)  # a first bound; check_prompt gives the clear message


class SteerIn(TextIn):
    scale: float = 4.0
    n_tokens: int = 16


@dataclass
class Explorer:
    """What a page needs: the runs, their units (read lazily) and the live model."""

    catalog: Catalog
    units: UnitsCache
    live: LiveModel

    def unit_ref(self, run_id: str, index: int, text: str) -> UnitRef:
        """What the live box needs for unit ``index`` of run ``run_id``; checks the ids and the prompt."""
        run = self.catalog.get(run_id)
        units = self.units.get(run)
        card = units.card(units.check(index)) or {}
        check_prompt(text)
        site = str(card.get("site") or run.record.get("site") or "")
        real_index = int(card.get("index", index)) if units.unit_kind == "neuron" else index
        return UnitRef(units.unit_kind, site, real_index, run.path, run.model)

    # ---- pages, as HTML strings (the routes and export_page both call these) -----------------------------
    def index_html(self, export: bool = False) -> str:
        self.catalog.rescan()
        catalog = self.catalog
        return pages.index_page(catalog.runs, str(catalog.root), export, catalog.unreadable)

    def run_html(self, run_id: str, params: dict, export: bool = False) -> str:
        run = self.catalog.get(run_id)
        if run.kind in ("neurons", "sae"):
            try:
                units = self.units.get(run)
            except NotFound as err:  # e.g. an SAE saved before its feature cards were made
                note = f"{err}, so there is no {run.kind} browser for it; its saved report follows."
                return pages.run_page(run, self.report_text(run), export, note=note)
            order, keep = _listing(units, params)
            page = _int(params.get("page") or 1, "page")
            return pages.units_page(run, units, order, page, PER_PAGE, keep, export)
        probe_path = run.file("probe.json") if run.kind == "probe" else None
        probe = read_json_file(probe_path) if probe_path else None
        return pages.run_page(run, self.report_text(run), export, probe)

    def unit_html(self, run_id: str, index: int, params: dict, export: bool = False) -> str:
        run = self.catalog.get(run_id)
        units = self.units.get(run)
        units.check(index)
        card = units.card(index)
        text = str(params.get("text") or "")
        live = steered = None
        if text:
            ref = self.unit_ref(run_id, index, text)
            live = unit_activations(self.live, ref, text)
            if params.get("scale") not in (None, ""):
                n = _int(params.get("n_tokens") or 16, "n_tokens")
                steered = steer(self.live, ref, text, _opt_float(params["scale"], "scale"), n)
        return pages.unit_page(run, units, index, card, export, text, live, steered)

    def report_text(self, run: Run) -> str | None:
        path = run.file("report.html")
        if path is None:
            return None
        with open(path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")


def _listing(units: Units, params: dict) -> tuple[np.ndarray, dict]:
    """(unit indices matching the list page's filter, in its order; the query to keep in paging links)."""
    min_d = _opt_float(params.get("min_density"), "min_density")
    max_d = _opt_float(params.get("max_density"), "max_density")
    sort, order = params.get("sort") or "density", params.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise InputError(f"order must be 'asc' or 'desc', not {order!r}")
    query = str(params.get("q") or "")[:200]
    try:
        idx = units.listing(sort, order == "desc", query, min_d, max_d)
    except ValueError as err:
        raise InputError(str(err)) from err
    keep = {"q": query, "sort": sort, "order": order}
    keep.update({k: params[k] for k in ("min_density", "max_density") if params.get(k)})
    return idx, {k: v for k, v in keep.items() if v}


def _int(value: object, name: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise InputError(f"{name} must be a whole number, got {str(value)[:40]!r}") from None


def _opt_float(value: object, name: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        out = float(str(value))
    except ValueError:
        raise InputError(f"{name} must be a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(out):
        raise InputError(f"{name} must be a finite number")
    return out


def create_app(root: str | Path, model=None, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The explorer over the runs under ``root``.

    model: a loaded ``lmscope.Model``, a name for ``lmscope.load`` (one model for every run), or None: load the
    model a run names in its run.json on the first live request. allowed_hosts: Host headers accepted (default
    loopback names only, which also stops DNS-rebinding pages from reaching the server); ["*"] for any.
    """
    ex = Explorer(Catalog(root), UnitsCache(), LiveModel(model))
    app = FastAPI(title="lmscope explorer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.explorer = ex
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or LOOPBACK_HOSTS)

    def html(text: str, status: int = 200, export: bool = False) -> HTMLResponse:
        headers = {
            "Content-Security-Policy": PAGE_CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        if export:
            headers["Content-Disposition"] = 'attachment; filename="lmscope-page.html"'
        return HTMLResponse(text, status_code=status, headers=headers)

    # ---- errors: a short page (or JSON under /api/) with the message; never a traceback --------------------
    def error(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": {"status": status, "message": message}}, status_code=status)
        return html(pages.error_page(status, message), status)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, err: NotFound):
        return error(request, 404, str(err))

    @app.exception_handler(InputError)
    async def _bad_input(request: Request, err: InputError):
        return error(request, err.status, str(err))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, err: HTTPException):
        messages = {
            404: f"there is no page at {request.url.path[:200]}",
            405: "this address does not take that method",
        }
        detail = (
            err.detail
            if isinstance(err.detail, str) and err.status_code not in messages
            else messages.get(err.status_code, "")
        )
        return error(request, err.status_code, detail or "request failed")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        problems = []
        for e in err.errors()[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "path", "query"))
            problems.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
        return error(request, 422, "invalid input: " + "; ".join(problems))

    @app.exception_handler(Exception)
    async def _crash(request: Request, err: Exception):
        log.exception("explorer: error serving %s", request.url.path)
        return error(
            request, 500, f"the explorer hit an error ({type(err).__name__}); the server log has details"
        )

    # ---- pages ---------------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def index(export: bool = False):
        return html(ex.index_html(export), export=export)

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(run_id: str, request: Request, export: bool = False):
        return html(ex.run_html(run_id, dict(request.query_params), export), export=export)

    @app.get("/runs/{run_id}/units/{index}", response_class=HTMLResponse)
    def unit_page(run_id: str, index: int, request: Request, export: bool = False):
        return html(ex.unit_html(run_id, index, dict(request.query_params), export), export=export)

    @app.get("/runs/{run_id}/report.html")
    def report(run_id: str):
        text = ex.report_text(ex.catalog.get(run_id))
        if text is None:
            raise NotFound(f"run {run_id!r} has no report.html")
        headers = {"Content-Security-Policy": REPORT_CSP, "X-Content-Type-Options": "nosniff"}
        return HTMLResponse(text, headers=headers)

    # ---- API ----------------------------------------------------------------------------------------------
    @app.get("/api/runs")
    def api_runs():
        ex.catalog.rescan()
        return [
            {"id": r.id, "kind": r.kind, "title": r.title, "model": r.model, "created": r.created}
            for r in ex.catalog.runs
        ]

    @app.get("/api/runs/{run_id}/units/{index}")
    def api_unit(run_id: str, index: int):
        units = ex.units.get(ex.catalog.get(run_id))
        return {"index": units.check(index), "card": units.card(index)}

    @app.post("/api/runs/{run_id}/units/{index}/activations")
    def api_activations(run_id: str, index: int, body: TextIn):
        return unit_activations(ex.live, ex.unit_ref(run_id, index, body.text), body.text)

    @app.post("/api/runs/{run_id}/units/{index}/steer")
    def api_steer(run_id: str, index: int, body: SteerIn):
        ref = ex.unit_ref(run_id, index, body.text)
        return steer(ex.live, ref, body.text, body.scale, body.n_tokens)

    return app
