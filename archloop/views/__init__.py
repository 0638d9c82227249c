"""The pages people read: one set of Jinja2 templates for the live dashboard (tools/dashboard) and the
static report (`archloop report`, services/controller/report.py).

The dashboard links its script and style sheet and serves plotly.js from the plotly wheel; the static
report inlines all three and the report's data, so one HTML file opens from disk with no network.
Both draw their plots with static/plots.js from the same report document
(services.controller.report.report_document).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from archloop.enums import short_name
from archloop.v1 import evaluator_pb2

STATIC = Path(__file__).with_name("static")
ASSETS = ("app.css", "plots.js", "app.js")  # what /static/<name> serves besides plotly.min.js
RETRY_SECONDS = 5


@functools.cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("archloop.views", "templates"),
        autoescape=select_autoescape(),
        extensions=["jinja2.ext.do"],
    )
    env.filters["num"] = num
    env.filters["pct"] = lambda v: "–" if _missing(v) else f"{v * 100:.1f} %"
    env.filters["p"] = lambda v: "–" if _missing(v) else ("< 0.0001" if v < 1e-4 else f"{v:.4f}")
    env.filters["stage"] = lambda v: short_name(evaluator_pb2.EvaluationStage, v).lower()
    env.filters["status"] = lambda v: short_name(evaluator_pb2.EvaluationStatus, v)
    env.filters["highlight"] = highlight
    env.globals["retry_seconds"] = RETRY_SECONDS
    return env


def _missing(value: object) -> bool:
    return value is None or value == "" or (isinstance(value, float) and not math.isfinite(value))


def num(value: object, digits: int = 3) -> str:
    if _missing(value):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def highlight(code: str) -> str:
    from pygments import highlight as pygmentize
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    return pygmentize(code, PythonLexer(), HtmlFormatter(cssclass="code", linenos="table"))


@functools.cache
def code_css() -> str:
    from pygments.formatters import HtmlFormatter

    return HtmlFormatter(cssclass="code").get_style_defs(".code")


@functools.cache
def plotly_bundle() -> str:
    """plotly.js from the plotly wheel (the version the Python package pins)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def asset(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


def _inlined(script_names: tuple[str, ...]) -> dict:
    """What a self-contained page carries instead of links: the style sheet and the scripts' text
    ("</" escaped so no script can close its tag early)."""
    scripts = [plotly_bundle(), *(asset(name) for name in script_names)]
    return {"css": asset("app.css"), "scripts": [s.replace("</", "<\\/") for s in scripts]}


def render_report(document: dict) -> str:
    """The static report of one experiment: a single HTML file, nothing fetched."""
    return environment().get_template("report.html").render(
        inline=_inlined(("plots.js",)), doc=document, code_css=code_css(),
        title=f"Report {document['experiment_id']}",
    )  # fmt: skip


def render_comparison(rows: list[dict], series: list[dict]) -> str:
    """The comparison of experiments (NNGPT Table 3) as a single HTML file: `rows` from
    services.controller.report.comparison_rows, `series` each experiment's cycle summaries."""
    return (
        environment()
        .get_template("compare.html")
        .render(inline=_inlined(("plots.js",)), rows=rows, series=series, title="Comparison of experiments")
    )
