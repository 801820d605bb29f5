#!/usr/bin/env python3
"""shapecheck's HTML report in headless Chromium: the README's picture, and what the browser
test measures.

    python3 scripts/screenshot.py [OUT.png]    writes docs/notebook.png

The README's picture is a real notebook: a kernel runs ``%load_ext shapecheck`` and the seed's
failing cell (nbclient), the cell is exported as JupyterLab shows it (nbconvert's lab template)
and photographed. It needs the notebook extra (``pip install -e '.[notebook]'``) and a Chromium
(Debian: ``apt-get install chromium``).

For the browser test: ``page`` holds a report's own HTML as a notebook shows it, with a probe
script; ``measure`` returns what the probe found (page width, where the failing row and the fix
are, whether shapes are monospaced and labels aligned, the contrast of the failure's colour).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 1000, 1400
_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

#: Runs after the report is laid out and writes what it measured into <pre id="probe">.
PROBE = """
<script>
(function () {
  function lum(rgb) {
    var c = rgb.match(/[\\d.]+/g).slice(0, 3).map(function (v) {
      v = v / 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
  }
  function contrast(a, b) { var x = lum(a), y = lum(b);
    return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); }
  function bottom(sel) { var e = document.querySelector(sel);
    return e ? e.getBoundingClientRect().bottom : null; }
  var shapes = Array.prototype.slice.call(document.querySelectorAll('.shapecheck .sc-shape'));
  var perChar = shapes.map(function (s) {
    return s.getBoundingClientRect().width / s.textContent.length; });
  var lefts = Array.prototype.slice.call(document.querySelectorAll('.shapecheck .sc-ev td'))
    .map(function (td) { var r = document.createRange(); r.selectNodeContents(td);
      return r.getClientRects()[0].left; });
  var bad = document.querySelector('.shapecheck .sc-bad');
  var background = getComputedStyle(document.body).backgroundColor;
  if (background === 'rgba(0, 0, 0, 0)') background = 'rgb(255, 255, 255)';
  var result = {
    viewport: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    height: bottom('.shapecheck'),
    failingRow: bottom('.shapecheck tr.sc-failed'),
    fix: bottom('.shapecheck .sc-fix'),
    details: document.querySelectorAll('.shapecheck details').length,
    shapes: shapes.length,
    charWidths: [Math.min.apply(null, perChar), Math.max.apply(null, perChar)],
    evidenceLefts: [Math.min.apply(null, lefts), Math.max.apply(null, lefts)],
    failureContrast: bad ? contrast(getComputedStyle(bad).color, background) : null
  };
  var out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
})();
</script>
"""

_LIGHT = "<body style='margin:16px;background:#fff;color:#000' data-jp-theme-light='true'>"
_DARK = "<body style='margin:16px;background:#111;color:#e6e6e6' data-jp-theme-light='false'>"


def find_chromium() -> str | None:
    """The first Chromium-like browser on PATH, or None."""
    return next((found for name in _BROWSERS if (found := shutil.which(name))), None)


def page(report_html: str, dark: bool = False, probe: bool = True) -> str:
    """A page holding a report's HTML as a notebook output would, on a light or dark theme."""
    body = _DARK if dark else _LIGHT
    return (f"<!doctype html><html><head><meta charset='utf-8'></head>{body}{report_html}"
            f"{PROBE if probe else ''}</body></html>")  # fmt: skip


def with_probe(document: str) -> str:
    """Any HTML document (an nbconvert export) with the probe run at the end of its body."""
    head, tag, tail = document.rpartition("</body>")
    return f"{head}{PROBE}{tag}{tail}" if tag else document + PROBE


def _run(browser: str, *args: str, timeout: float = 120) -> str:
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--hide-scrollbars", f"--user-data-dir={profile}",
             f"--window-size={WIDTH},{HEIGHT}", *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{browser} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def measure(browser: str, html_file: Path) -> dict[str, Any]:
    """What the probe measured on the page, laid out at 1000 x 1400."""
    dom = _run(browser, "--virtual-time-budget=3000", "--dump-dom", html_file.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    if found is None:
        raise RuntimeError("the probe did not run: no <pre id='probe'> in the page")
    text = found.group(1).replace("&quot;", '"').replace("&amp;", "&")
    result: dict[str, Any] = json.loads(text)
    return result


def screenshot(browser: str, html_file: Path, png: Path, height: int = HEIGHT) -> None:
    """A PNG of the page, ``WIDTH`` wide and ``height`` high."""
    png.parent.mkdir(parents=True, exist_ok=True)
    _run(browser, f"--window-size={WIDTH},{height}", f"--screenshot={png}", html_file.as_uri())
    if not png.is_file() or png.stat().st_size < 1000:
        raise RuntimeError(f"{browser} wrote no screenshot to {png}")


CELLS = (
    "%load_ext shapecheck\n%xmode Minimal",
    "import torch\nfrom shapecheck.demo import seed_model\n"
    "model, img = seed_model(), torch.randn(3, 32, 32)",
    "model(img.unsqueeze(0))",
)


def notebook_html() -> str:
    """The seed's failing cell, run in a real kernel, exported as JupyterLab shows it."""
    import nbclient
    import nbconvert
    import nbformat

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            allow_errors=True).execute()  # fmt: skip
    notebook.cells = notebook.cells[-1:]
    exporter = nbconvert.HTMLExporter(template_name="lab")
    document: str = exporter.from_notebook_node(notebook)[0]
    return document


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else ROOT / "docs" / "notebook.png"
    browser = find_chromium()
    if browser is None:
        print("screenshot.py: no Chromium on PATH (Debian: apt-get install chromium)")
        return 2
    document = notebook_html()
    with tempfile.TemporaryDirectory() as folder:
        html_file = Path(folder) / "notebook.html"
        html_file.write_text(with_probe(document), encoding="utf-8")
        height = int(measure(browser, html_file)["height"]) + 24
        html_file.write_text(document, encoding="utf-8")
        screenshot(browser, html_file, out, height=min(height, HEIGHT))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
