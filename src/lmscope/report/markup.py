"""The one HTML escaper and the one template system of lmscope.

``render("page.html", title=...)`` renders a Jinja2 template from ``lmscope/report/templates``; a name with
a prefix, ``render("explorer/unit.html", ...)``, comes from that part's folder (``lmscope/explorer/templates``).
Autoescaping is on for ``.html`` and ``.svg`` templates: every value is escaped by :func:`esc` unless it is
marked safe (:class:`Markup`, or an object with ``__html__`` such as a :class:`~lmscope.report.Figure`).
"""

from __future__ import annotations

import functools
import re

import jinja2
from markupsafe import Markup, escape

__all__ = ["Markup", "esc", "render"]

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # not allowed in XML 1.0 (tokens can hold them)


def _visible(value: object) -> object:
    """Control characters in text become a visible ``\\xNN`` (they are invalid in SVG and unreadable)."""
    if isinstance(value, str) and not hasattr(value, "__html__"):
        return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
    return value


def esc(value: object) -> Markup:
    """``value`` as text safe inside HTML or SVG, in element text and in quoted attributes alike."""
    return escape(_visible(value if hasattr(value, "__html__") else str(value)))


class _PartLoader(jinja2.BaseLoader):
    """"name" -> lmscope/report/templates/name; "part/name" -> lmscope/part/templates/name."""

    def get_source(self, environment, template):
        part, _, name = template.rpartition("/") if "/" in template else ("report", "", template)
        return _package_loader(part).get_source(environment, name)


@functools.cache
def _package_loader(part: str) -> jinja2.PackageLoader:
    if not re.fullmatch(r"[a-z_]+", part):
        raise jinja2.TemplateNotFound(f"{part}/ (a template prefix names a part of lmscope, like 'explorer/')")
    return jinja2.PackageLoader(f"lmscope.{part}", "templates")


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=_PartLoader(),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "svg"), default_for_string=True),
        finalize=_visible,  # so autoescaped output goes through the same steps as esc()
        undefined=jinja2.StrictUndefined,  # a missing value is a bug in the caller, not an empty string
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["esc"] = esc
    return env


def render(template_name: str, **context: object) -> str:
    """The template ``template_name`` (see the module docstring for where it is looked up) filled in."""
    return _environment().get_template(template_name).render(**context)
