"""The local web explorer: browse run folders (neurons, SAE features, probes, patching, audits) in a browser.

from lmscope.explorer import create_app, serve, export_page
serve("runs/")                                   # http://127.0.0.1:8765/
export_page("runs/", "/runs/sae-l8/units/12", "feature12.html")   # one self-contained HTML file
"""

from .app import create_app
from .serve import export_page, serve

__all__ = ["create_app", "export_page", "serve"]
