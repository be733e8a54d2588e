"""``dvc plots show`` / ``dvc plots diff`` must render offline with the generated template.

Unit tests (always run) check :mod:`anomaly_spotter.evaluation.plots_template` with fake bundles and the
pins in ``package.json``. The integration tests build a tiny DVC repository (a JSON line plot
and a PNG image plot declared in ``dvc.yaml``), point ``plots.html_template`` at the template
built from the real ``node_modules/`` and run the real ``dvc`` CLI; the last one loads the page
in headless Chromium with every host name unresolvable (so a CDN fetch could not succeed) and
checks that vega drew marks and that the screenshot shows the line and the image.

They skip, saying why, when ``node_modules`` lacks the bundles (``make setup`` runs ``npm ci``),
when no ``dvc`` is installed, or (Chromium part only) when no Chromium binary is found
(``apt-get install -y chromium``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from anomaly_spotter.errors import UserError
from anomaly_spotter.evaluation.plots_template import (
    BUNDLES,
    CONFIG_VALUE,
    DEFAULT_OUT,
    build_offline_template,
    main,
    render_offline_template,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
NODE_MODULES = REPO_ROOT / "node_modules"
MISSING_BUNDLES = [f"{p}/{rel}" for p, rel in BUNDLES if not (NODE_MODULES / p / rel).is_file()]
needs_bundles = pytest.mark.skipif(
    bool(MISSING_BUNDLES),
    reason=f"node_modules lacks {', '.join(MISSING_BUNDLES)}; `make setup` installs them (npm ci)",
)

# The image plot is one flat colour so the screenshot check can find it; the line colour is
# the first entry of DVC's default palette (dvc_render.vega.OPTIONAL_ANCHOR_RANGES["color"]).
IMAGE_RGB = (255, 0, 255)
IMAGE_SIZE = (80, 60)
LINE_RGB = (0x94, 0x5D, 0xD6)


# --------------------------------------------------------------------------- helpers


def _fake_node_modules(root: Path, body: str = "/* {name} */") -> Path:
    for name, rel in BUNDLES:
        bundle = root / name / rel
        bundle.parent.mkdir(parents=True, exist_ok=True)
        bundle.write_text(body.replace("{name}", name), encoding="utf-8")
        (root / name / "package.json").write_text(json.dumps({"version": "9.9.9"}), encoding="utf-8")
    return root


def _write_png(path: Path, size: tuple[int, int], rgb: tuple[int, int, int]) -> None:
    """Write a flat-colour RGB PNG with the standard library only (no Pillow/OpenCV needed)."""
    width, height = size
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def _rgb_pixels(path: Path) -> list[tuple[int, int, int]]:
    """Decode a screenshot with Pillow or OpenCV, whichever is installed."""
    try:
        from PIL import Image
    except ImportError:
        pass
    else:
        with Image.open(path) as image:
            data = image.convert("RGB").tobytes()
        return [(data[i], data[i + 1], data[i + 2]) for i in range(0, len(data), 3)]
    try:
        import cv2
    except ImportError:
        pytest.skip("neither Pillow nor OpenCV is installed to read the screenshot")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return [(int(r), int(g), int(b)) for b, g, r in bgr.reshape(-1, 3)]


def _near(pixel: tuple[int, int, int], rgb: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, rgb, strict=False))


def _dvc_command() -> list[str]:
    """The ``dvc`` that belongs to this interpreter (its venv's script, or ``python -m dvc``)."""
    sibling = Path(sys.executable).with_name("dvc")
    if sibling.is_file():
        return [str(sibling)]
    if importlib.util.find_spec("dvc") is not None:
        return [sys.executable, "-m", "dvc"]
    pytest.skip("dvc is not installed in this interpreter's environment")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip(
        "no Chromium binary found (chromium / chromium-browser / google-chrome); "
        "install it with `apt-get install -y chromium` to check the page renders"
    )


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _assert_self_contained(page: str) -> None:
    # Every <script> must be inline: no src= at all, so certainly no http(s):// one.
    srcs = re.findall(r"<script\b[^>]*\bsrc\s*=\s*['\"]?([^'\" >]*)", page, flags=re.IGNORECASE)
    assert srcs == [], f"page still loads scripts from {srcs}"
    assert not re.search(r"\b(src|href)\s*=\s*['\"]?(https?:)?//", page, flags=re.IGNORECASE)
    assert "cdn.jsdelivr.net" not in page
    assert 'name="generator" content="anomaly_spotter.evaluation.plots_template' in page


# --------------------------------------------------------------------------- unit tests


def test_missing_bundle_names_the_file_and_make_setup(tmp_path: Path) -> None:
    out = tmp_path / "t.html"
    with pytest.raises(UserError) as info:
        build_offline_template(tmp_path / "node_modules", out)
    message = str(info.value)
    assert str(tmp_path / "node_modules" / "vega") in message
    assert "make setup" in message
    assert not out.exists()


def test_main_reports_missing_bundles_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_node_modules(tmp_path / "nm")
    (tmp_path / "nm" / "vega-embed" / "build" / "vega-embed.min.js").unlink()
    code = main(["--node-modules", str(tmp_path / "nm"), "--out", str(tmp_path / "t.html")])
    err = capsys.readouterr().err
    assert code == 2
    assert "vega-embed.min.js is missing" in err and "make setup" in err


def test_template_inlines_bundles_in_order_without_dvc_scripts(tmp_path: Path) -> None:
    nm = _fake_node_modules(tmp_path / "nm")
    out = build_offline_template(nm, tmp_path / "deep" / "t.html")
    page = out.read_text(encoding="utf-8")
    # {plot_divs} is required by DVC; {scripts} must be absent: DVC puts its CDN tags there.
    assert "{plot_divs}" in page and "{refresh_tag}" in page and "{scripts}" not in page
    positions = [page.index(f"/* {name} */") for name, _ in BUNDLES]
    assert positions == sorted(positions), "vega must load before vega-lite before vega-embed"
    assert page.index("/* vega-embed */") < page.index('renderer: "svg"')
    assert "vega 9.9.9, vega-lite 9.9.9, vega-embed 9.9.9" in page
    # Deterministic: rebuilding gives the same bytes.
    assert render_offline_template(nm) == page
    assert 'renderer: "canvas"' in render_offline_template(nm, renderer="canvas")


@pytest.mark.parametrize("body", ["a='</SCRIPT>'", "a='<!--'", "x='{plot_divs}'", "x='{scripts}'"])
def test_refuses_bundles_that_cannot_be_inlined(tmp_path: Path, body: str) -> None:
    nm = _fake_node_modules(tmp_path / "nm", body=body)
    with pytest.raises(UserError, match="vega.min.js contains"):
        render_offline_template(nm)


def test_default_out_matches_config_value() -> None:
    # DVC resolves a relative plots.html_template against .dvc/, so the two must agree.
    assert Path(".dvc") / CONFIG_VALUE == DEFAULT_OUT


def test_versions_are_pinned_and_match_dvc_vega_lite_schema() -> None:
    manifest = json.loads((REPO_ROOT / "package.json").read_text(encoding="utf-8"))
    lock = json.loads((REPO_ROOT / "package-lock.json").read_text(encoding="utf-8"))
    pins = manifest["dependencies"]
    assert set(pins) == {name for name, _ in BUNDLES}
    for name, version in pins.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} must be pinned exactly, not {version!r}"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version, f"package-lock.json is stale for {name}"
    if importlib.util.find_spec("dvc_render") is None:
        pytest.skip("dvc_render not installed; cannot read the vega-lite $schema DVC emits")
    from dvc_render.vega_templates import LinearTemplate

    schema = LinearTemplate.DEFAULT_CONTENT["$schema"]
    major = re.search(r"/vega-lite/v(\d+)\.json$", schema)
    assert major, schema
    assert pins["vega-lite"].split(".")[0] == major.group(1), (
        f"DVC emits {schema}; pin a vega-lite {major.group(1)}.x (and the matching vega / vega-embed)"
    )


# --------------------------------------------------------------------------- integration


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], dict[str, str]]:
    """A git+DVC repo with a committed line plot (then changed) and an image plot, template configured."""
    if MISSING_BUNDLES:
        pytest.skip(f"node_modules lacks {', '.join(MISSING_BUNDLES)}; `make setup` installs them (npm ci)")
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    dvc = _dvc_command()
    repo = tmp_path_factory.mktemp("plots_repo")
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(repo.parent / "dvc_site_cache"),  # keep /var/tmp/dvc untouched
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    _run(["git", "init", "-q"], repo, env)
    _run([*dvc, "init", "-q"], repo, env)
    (repo / "dvc.yaml").write_text(
        "plots:\n  - loss.json:\n      x: step\n      y: loss\n  - sample.png\n", encoding="utf-8"
    )
    (repo / "loss.json").write_text(
        json.dumps([{"step": i, "loss": 1.0 / (i + 1)} for i in range(6)]), encoding="utf-8"
    )
    _write_png(repo / "sample.png", IMAGE_SIZE, IMAGE_RGB)
    build_offline_template(NODE_MODULES, repo / DEFAULT_OUT)
    # Written exactly as in the committed .dvc/config: relative, so it resolves against .dvc/.
    _run([*dvc, "config", "plots.html_template", CONFIG_VALUE], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "-c", "commit.gpgsign=false", "commit", "-q", "-m", "v1"], repo, env)
    (repo / "loss.json").write_text(
        json.dumps([{"step": i, "loss": 2.0 / (i + 2)} for i in range(6)]), encoding="utf-8"
    )
    return repo, dvc, env


@pytest.mark.integration
@needs_bundles
def test_plots_show_writes_self_contained_page(plots_repo: tuple[Path, list[str], dict[str, str]]) -> None:
    repo, dvc, env = plots_repo
    _run([*dvc, "plots", "show"], repo, env)
    page = (repo / "dvc_plots" / "index.html").read_text(encoding="utf-8")
    _assert_self_contained(page)
    assert 'src="static/workspace_sample.png"' in page
    assert (repo / "dvc_plots" / "static" / "workspace_sample.png").is_file()


@pytest.mark.integration
@needs_bundles
def test_plots_diff_writes_self_contained_page(plots_repo: tuple[Path, list[str], dict[str, str]]) -> None:
    repo, dvc, env = plots_repo
    out = repo / "diff_plots"
    _run([*dvc, "plots", "diff", "HEAD", "--out", str(out)], repo, env)
    page = (out / "index.html").read_text(encoding="utf-8")
    _assert_self_contained(page)
    assert '"rev": "HEAD"' in page and '"rev": "workspace"' in page


@pytest.mark.integration
@needs_bundles
def test_plots_render_in_headless_chromium(plots_repo: tuple[Path, list[str], dict[str, str]], tmp_path: Path) -> None:
    repo, dvc, env = plots_repo
    chromium = _chromium()
    _run([*dvc, "plots", "show"], repo, env)
    url = (repo / "dvc_plots" / "index.html").as_uri()
    base = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        # Any host lookup fails, so the page can only render if it needs no network.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        # Let scripts and vega's async dataflow finish before dumping / capturing.
        "--virtual-time-budget=10000",
        "--hide-scrollbars",
        "--window-size=1000,900",
        "--enable-logging=stderr",
    ]

    dom_run = _run([*base, f"--user-data-dir={tmp_path / 'profile1'}", "--dump-dom", url], tmp_path, env)
    dom = dom_run.stdout
    assert "Uncaught" not in dom_run.stderr, dom_run.stderr[-3000:]
    assert '<pre class="vega-error">' not in dom, "vega-embed reported an error (see the <pre class='vega-error'>)"
    # The svg renderer puts every mark in the DOM: the line, its points, axes.
    assert re.search(r'<path[^>]*aria-roledescription="line mark"|class="mark-line role-mark', dom), dom[-3000:]
    assert len(re.findall(r'role="graphics-symbol"', dom)) >= 6
    assert re.search(r'class="mark-text role-axis-title"', dom)

    shot = tmp_path / "plots.png"
    _run([*base, f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}", url], tmp_path, env)
    pixels = _rgb_pixels(shot)
    non_white = sum(1 for p in pixels if min(p) < 240)
    image_px = sum(1 for p in pixels if _near(p, IMAGE_RGB, tol=10))
    line_px = sum(1 for p in pixels if _near(p, LINE_RGB))
    assert non_white > 5000, f"screenshot {shot} looks blank ({non_white} non-white pixels)"
    assert image_px >= 0.9 * IMAGE_SIZE[0] * IMAGE_SIZE[1], f"image plot not visible in {shot} ({image_px} px)"
    assert line_px >= 100, f"line of the vega plot not visible in {shot} ({line_px} px)"
