"""Running the explorer (``serve``) and writing one of its pages to a self-contained file (``export_page``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from ..runs import write_atomic
from .app import Explorer, create_app
from .data import NotFound


@dataclass
class ExploreOptions:
    """What `lmscope explore` sets: where the runs are, where to serve, or a page to write instead."""

    run_dir: str = field(
        default=".", metadata={"positional": True, "help": "a run folder or a folder of them"}
    )
    host: str = field(
        default="127.0.0.1", metadata={"help": "address to bind (127.0.0.1: this machine only)"}
    )
    port: int = field(default=8765, metadata={"help": "port to serve on"})
    model: str | None = field(
        default=None, metadata={"help": "model for the live box (default: the one each run names)"}
    )
    export: str | None = field(
        default=None,
        metadata={"metavar": "PAGE", "help": "write PAGE (e.g. /runs/ID/units/12) to --out instead"},
    )
    out: str = field(default="lmscope-page.html", metadata={"help": "file for --export"})


@dataclass
class ExportOptions:
    """What `lmscope export` sets: one explorer page written as a self-contained HTML file."""

    run_dir: str = field(metadata={"positional": True, "help": "a run folder or a folder of them"})
    page: str = field(
        metadata={
            "positional": True,
            "help": "the page's address, e.g. / or /runs/ID or '/runs/ID/units/12?text=hello'",
        }
    )
    out: str = field(metadata={"help": "the HTML file to write"})
    model: str | None = field(
        default=None, metadata={"help": "model for a page with ?text= (default: the run's own)"}
    )


_ROUTES = [
    (re.compile(r"^/?$"), "index"),
    (re.compile(r"^/?runs/([^/]+)/?$"), "run"),
    (re.compile(r"^/?runs/([^/]+)/units/(\d+)/?$"), "unit"),
]


def render_page(explorer: Explorer, page: str, export: bool = True) -> str:
    """The HTML of the explorer page at address ``page`` (such as ``/runs/ID/units/12?text=hello``)."""
    parts = urlsplit(page)
    params = dict(parse_qsl(parts.query))
    for pattern, name in _ROUTES:
        match = pattern.match(parts.path)
        if match is None:
            continue
        if name == "index":
            return explorer.index_html(export)
        if name == "run":
            return explorer.run_html(match.group(1), params, export)
        return explorer.unit_html(match.group(1), int(match.group(2)), params, export)
    raise NotFound(f"no explorer page at {page!r}; pages are /, /runs/RUN_ID and /runs/RUN_ID/units/N")


def export_page(root: str | Path, page: str, out: str | Path, model=None) -> Path:
    """Write the page at address ``page`` of the explorer over ``root`` to ``out`` as one self-contained HTML
    file (inline CSS and SVG, no script, no link to a server). ``model`` is needed only for a unit page with
    ``?text=`` (its live activations are computed and written in)."""
    app = create_app(root, model=model)
    html = render_page(app.state.explorer, page, export=True)
    return write_atomic(out, html.encode("utf-8"))


def serve(
    root: str | Path,
    host: str = ExploreOptions.host,
    port: int = ExploreOptions.port,
    model=None,
    log_level: str = "warning",
) -> None:
    """Serve the explorer over the runs under ``root`` until interrupted (Ctrl-C).

    Binds 127.0.0.1 by default. On another host the Host-header check is off, so anyone who can reach the
    port can use the live box (which runs the model): do that only on a trusted network.
    """
    import uvicorn

    loopback = host in ("127.0.0.1", "localhost", "::1")
    app = create_app(root, model=model, allowed_hosts=None if loopback else ["*"])
    print(f"lmscope explorer: {len(app.state.explorer.catalog.runs)} runs under {Path(root).resolve()}")
    print(f"open http://{'[' + host + ']' if ':' in host else host}:{port}/  (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level=log_level)
