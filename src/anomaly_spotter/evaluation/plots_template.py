"""Build the HTML template that makes ``dvc plots show`` / ``dvc plots diff`` work offline.

DVC's default page loads vega, vega-lite and vega-embed from cdn.jsdelivr.net, so without
internet the page is blank. DVC lets a repository replace that page (``plots.html_template``
in ``.dvc/config``); this module writes such a template with the three libraries *inlined*
from ``node_modules/`` (installed by ``npm ci`` from the committed ``package-lock.json``, so
the exact versions are pinned and integrity-checked by npm; no third-party JS is committed).

Use (``make setup`` does both steps)::

    npm ci
    python -m anomaly_spotter.evaluation.plots_template            # writes .dvc/tmp/plots_template.html

and, committed once in ``.dvc/config`` (DVC resolves a relative path against ``.dvc/``)::

    [plots]
        html_template = tmp/plots_template.html

after which the plain ``dvc plots show`` and ``dvc plots diff`` write a self-contained
``dvc_plots/index.html``.

How the template works with DVC (``dvc_render.html``): DVC fills the template by plain text
replacement of ``{plot_divs}`` (required), ``{scripts}`` and ``{refresh_tag}`` (optional).
The template deliberately has **no** ``{scripts}`` placeholder, because that is where DVC
puts its CDN ``<script src=...>`` tags. Each vega plot div then calls the global
``vegaEmbed('#id', spec)``; the template wraps that global to add embed options (SVG
renderer, no "Open in Vega Editor" link, visible error text instead of a blank box).

Example:
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name, rel in BUNDLES:
    ...     (root / name / rel).parent.mkdir(parents=True)
    ...     _ = (root / name / rel).write_text(f"/* {name} */")
    ...     _ = (root / name / "package.json").write_text('{"version": "1.0.0"}')
    >>> page = build_offline_template(root, root / "t.html").read_text()
    >>> "{plot_divs}" in page, "{scripts}" in page, "/* vega-embed */" in page
    (True, False, True)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from anomaly_spotter.errors import UserError
from anomaly_spotter.fileio import write_text

# (npm package, minified UMD bundle inside it). UMD because it defines the globals
# ``vega``, ``vegaLite`` and ``vegaEmbed`` from a plain <script>, which is what DVC's plot divs
# call; the order matters: vega-lite needs ``vega``, vega-embed needs both.
BUNDLES: tuple[tuple[str, str], ...] = (
    ("vega", "build/vega.min.js"),
    ("vega-lite", "build/vega-lite.min.js"),
    ("vega-embed", "build/vega-embed.min.js"),
)

# Where ``make setup`` writes the template: ``.dvc/tmp/`` is git-ignored by DVC itself
# (``dvc init`` writes ``.dvc/.gitignore`` with ``/tmp``), and it is a generated file.
DEFAULT_OUT = Path(".dvc/tmp/plots_template.html")
# The matching ``plots.html_template`` value: DVC joins a relative value to the ``.dvc/`` dir.
CONFIG_VALUE = "tmp/plots_template.html"

# DVC substitutes these by plain ``str.replace`` over the whole page, inlined JS included.
_DVC_PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

# Wraps the global ``vegaEmbed`` that DVC's per-plot ``<script>`` calls without options.
# * renderer "svg": marks become DOM nodes (crisp when zoomed, inspectable, testable).
# * actions without "editor": the Vega Editor link needs internet; export/source still work.
# * catch: a failed spec shows its error in the page instead of an empty box.
_EMBED_WRAPPER = """
(function () {
  var embed = window.vegaEmbed;
  var defaults = {
    renderer: "%(renderer)s",
    actions: {export: true, source: true, compiled: true, editor: false}
  };
  function offlineEmbed(el, spec, opts) {
    // Only the (element, spec[, options]) form DVC uses; other forms pass through untouched.
    if (typeof el !== "string" && !(el instanceof Element)) {
      return embed.apply(this, arguments);
    }
    return embed(el, spec, Object.assign({}, defaults, opts || {})).catch(function (err) {
      var node = typeof el === "string" ? document.querySelector(el) : el;
      if (node) {
        var pre = document.createElement("pre");
        pre.className = "vega-error";
        pre.textContent = "Plot failed to render: " + err;
        node.appendChild(pre);
      }
      console.error(err);
    });
  }
  Object.assign(offlineEmbed, embed);  // keep vegaEmbed.version, .vega, .vegaLite, ...
  window.vegaEmbed = offlineEmbed;
})();
"""

# Same look as DVC's built-in page (dvc_render.html.PAGE_HTML), minus the CDN scripts.
_PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    <meta name="generator" content="anomaly_spotter.evaluation.plots_template (%(versions)s)">
    {refresh_tag}
    <title>DVC Plot</title>
%(scripts)s
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def _read_bundle(node_modules: Path, package: str, rel: str) -> tuple[str, str]:
    """Return ``(version, minified JS)`` of ``package``; raise :class:`UserError` naming what is missing."""
    manifest = node_modules / package / "package.json"
    bundle = node_modules / package / rel
    for path in (manifest, bundle):
        if not path.is_file():
            raise UserError(
                f"{path} is missing; run `make setup` (it runs `npm ci`, which installs the "
                f"vega, vega-lite and vega-embed versions pinned in package-lock.json)."
            )
    version = str(json.loads(manifest.read_text(encoding="utf-8")).get("version", "unknown"))
    js = bundle.read_text(encoding="utf-8")
    # Inlined JS must not end the <script> element early ("</script", or "<!--" which can switch
    # the HTML parser into escaped mode), and must not contain a DVC placeholder (DVC would
    # splice plot HTML into the library code).
    for marker in ("</script", "<!--"):
        if marker in js.lower():
            raise UserError(f"{bundle} contains {marker!r} and cannot be inlined into HTML.")
    for placeholder in _DVC_PLACEHOLDERS:
        if placeholder in js:
            raise UserError(f"{bundle} contains the DVC placeholder {placeholder!r}; cannot inline it.")
    return version, js


def render_offline_template(node_modules: Path, renderer: str = "svg") -> str:
    """Return the template text with the bundles from ``node_modules`` inlined."""
    if renderer not in ("svg", "canvas"):
        raise UserError(f"renderer must be 'svg' or 'canvas', not {renderer!r}")
    versions: list[str] = []
    scripts: list[str] = []
    for package, rel in BUNDLES:
        version, js = _read_bundle(Path(node_modules), package, rel)
        versions.append(f"{package} {version}")
        scripts.append(f"    <!-- {package} {version} ({package}/{rel}) -->\n    <script>\n{js}\n    </script>")
    scripts.append(f"    <script>{_EMBED_WRAPPER % {'renderer': renderer}}    </script>")
    # %-formatting, not str.format: the page and the JS are full of literal braces.
    return _PAGE % {"versions": ", ".join(versions), "scripts": "\n".join(scripts)}


def build_offline_template(node_modules: Path, out: Path, renderer: str = "svg") -> Path:
    """Write the offline DVC plots template built from ``node_modules`` to ``out``; return ``out``.

    The file is written atomically, so a concurrent ``dvc plots show`` never reads half of it,
    and deterministically (same bundles, same bytes). Raises :class:`UserError` when a bundle
    is missing (message names the file and says to run ``make setup``).
    """
    out = Path(out)
    write_text(out, render_offline_template(Path(node_modules), renderer=renderer))
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m anomaly_spotter.evaluation.plots_template [--node-modules DIR] [--out FILE]``."""
    parser = argparse.ArgumentParser(
        prog="python -m anomaly_spotter.evaluation.plots_template",
        description="Write the offline HTML template for `dvc plots show/diff` "
        f"(point `plots.html_template` in .dvc/config at it: {CONFIG_VALUE}).",
    )
    parser.add_argument(
        "--node-modules",
        type=Path,
        default=Path("node_modules"),
        help="folder `npm ci` installed into (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="template to write (default: %(default)s)")
    parser.add_argument(
        "--renderer",
        choices=("svg", "canvas"),
        default="svg",
        help="vega renderer; canvas is faster for very large plots (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        out = build_offline_template(args.node_modules, args.out, renderer=args.renderer)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
