"""Headless Chromium on the explain pages: screenshots, and a check that every image loads and
is not blank, that sorting reorders the index's rows, and that the page logs nothing to the
console. Driven by Chromium's own command line (``--screenshot``, ``--dump-dom``,
``--enable-logging=stderr``): no WebDriver, no browser download; Debian's ``chromium`` package.

    python -m student.explain.browser screenshot runs/demo/explain/<study>/study.html docs/explain_study.png
    python -m student.explain.browser check runs/demo/explain/index.html

The check injects a small script into a copy of the page written beside it (so relative image
paths resolve the same), reads its JSON verdict back from the dumped DOM, and removes the copy.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# As root Chromium needs --no-sandbox; the rest keep a headless run offline and quiet.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--hide-scrollbars", "--mute-audio", "--allow-file-access-from-files",
         "--enable-logging=stderr", "--v=0")
_CONSOLE = re.compile(r":CONSOLE[^\]]*\]\s*(.*)")
_VERDICT = re.compile(r'<pre id="kd-check">(.*?)</pre>', re.S)

HARNESS = r"""<script>
(function () {
  var errors = [];
  window.addEventListener("error", function (e) {
    errors.push(e.message || ("failed to load " + ((e.target && (e.target.src || e.target.href)) || "a resource")));
  }, true);
  var original = console.error;
  console.error = function () { errors.push(Array.prototype.join.call(arguments, " ")); original.apply(console, arguments); };
  function pixels(img) {
    try {
      var c = document.createElement("canvas"); c.width = img.naturalWidth; c.height = img.naturalHeight;
      var ctx = c.getContext("2d"); ctx.drawImage(img, 0, 0);
      var d = ctx.getImageData(0, 0, c.width, c.height).data, lo = 255, hi = 0, sum = 0, sq = 0, n = d.length / 4;
      for (var i = 0; i < d.length; i += 4) { var v = (d[i] + d[i + 1] + d[i + 2]) / 3; lo = Math.min(lo, v); hi = Math.max(hi, v); sum += v; sq += v * v; }
      var mean = sum / n;
      return {min: lo, max: hi, mean: mean, std: Math.sqrt(Math.max(sq / n - mean * mean, 0))};
    } catch (err) { return {error: String(err)}; }
  }
  function order(table) {
    return Array.prototype.map.call(table.tBodies[0].rows, function (r) { return r.getAttribute("data-study"); });
  }
  window.addEventListener("load", function () {
    var images = Array.prototype.map.call(document.images, function (img) {
      var p = pixels(img);
      return {src: img.getAttribute("src"), alt: img.getAttribute("alt"), loaded: img.complete && img.naturalWidth > 0,
              width: img.naturalWidth, height: img.naturalHeight, min: p.min, max: p.max, mean: p.mean, std: p.std, error: p.error};
    });
    var sorts = [], result = null, table = document.querySelector("table.sortable");
    if (table) {
      var initial = order(table);
      table.querySelectorAll("thead th").forEach(function (th) {
        var button = th.querySelector("button"); if (!button) { return; }
        var keys = function () { return Array.prototype.map.call(table.tBodies[0].rows, function (r) { return r.cells[th.cellIndex].getAttribute("data-sort"); }); };
        button.click(); var first = {order: order(table), keys: keys(), aria: th.getAttribute("aria-sort")};
        button.click(); var second = {order: order(table), keys: keys(), aria: th.getAttribute("aria-sort")};
        sorts.push({column: th.cellIndex, header: th.textContent.trim(), first: first, second: second});
      });
      result = {initial: initial, columns: sorts};
    }
    var pre = document.createElement("pre"); pre.id = "kd-check";
    pre.textContent = JSON.stringify({images: images, errors: errors, sort: result, title: document.title,
                                      text: document.body.innerText});
    document.body.appendChild(pre);
  });
})();
</script>"""


class BrowserError(RuntimeError):
    """Chromium failed to run or returned nothing usable."""


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) executable, or None."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(page: Path, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise BrowserError("no Chromium found (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="kd-chromium-") as profile:
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", *args, Path(page).resolve().as_uri()]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=profile,
                                  env={**os.environ, "HOME": profile})
        except subprocess.TimeoutExpired as err:
            raise BrowserError(f"Chromium did not finish in {timeout} s: {' '.join(cmd)}") from err


def console_messages(stderr: str) -> list[str]:
    """The page's console output, as Chromium logs it to stderr."""
    return [m.group(1) for m in map(_CONSOLE.search, stderr.splitlines()) if m]


def screenshot(page: str | Path, png: str | Path, width: int = 1280, height: int = 1600, timeout: float = 90,
               palette: bool = False) -> Path:
    """A PNG of ``page`` as a ``width`` x ``height`` window shows it; ``palette`` stores it with
    256 colours (a small file for the README)."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    proc = _run(Path(page), [f"--window-size={width},{height}", f"--screenshot={png}", "--virtual-time-budget=5000"],
                timeout)
    if not png.is_file():
        raise BrowserError(f"Chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}")
    if palette:
        from PIL import Image

        with Image.open(png) as img:
            small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        small.save(png, optimize=True)
    return png


def check_page(page: str | Path, timeout: float = 90) -> dict[str, Any]:
    """Load ``page`` with the check script; returns its verdict (images, errors, sort results,
    title, visible text) plus ``console``, the console lines Chromium logged."""
    page = Path(page)
    html = page.read_text(encoding="utf-8")
    if "<head>" not in html:
        raise BrowserError(f"{page}: no <head> to put the check script in")
    probe = page.with_name(f".kd-check-{uuid.uuid4().hex[:8]}.html")
    probe.write_text(html.replace("<head>", "<head>" + HARNESS, 1), encoding="utf-8")
    try:
        proc = _run(probe, ["--dump-dom", "--virtual-time-budget=5000"], timeout)
    finally:
        probe.unlink(missing_ok=True)
    found = _VERDICT.search(proc.stdout)
    if not found:
        raise BrowserError(f"{page}: the check script left no verdict (exit {proc.returncode}): {proc.stderr[-2000:]}")
    import html as html_lib

    verdict = json.loads(html_lib.unescape(found.group(1)))
    verdict["console"] = console_messages(proc.stderr)
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m student.explain.browser", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    shot = sub.add_parser("screenshot", help="save a PNG of a page")
    shot.add_argument("page", type=Path, help="an HTML page (index.html or a study's study.html)")
    shot.add_argument("png", type=Path, help="the PNG to write")
    shot.add_argument("--width", type=int, default=1280, help="window width in pixels")
    shot.add_argument("--height", type=int, default=1600, help="window height in pixels")
    shot.add_argument("--palette", action="store_true", help="store with 256 colours (a small file)")
    check = sub.add_parser("check", help="load a page and print the check's verdict as JSON")
    check.add_argument("page", type=Path, help="an HTML page")
    args = parser.parse_args(argv)
    if args.command == "screenshot":
        print(screenshot(args.page, args.png, args.width, args.height, palette=args.palette))
    else:
        verdict = check_page(args.page)
        verdict.pop("text", None)
        print(json.dumps(verdict, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
