"""Screenshots of TensorBoard's SCALARS, CUSTOM SCALARS and HPARAMS pages, from a headless browser.

    python run.py benchmark                                    # writes bench_out/quick
    python benchmarks/tensorboard_screenshots.py --logdir bench_out/quick --out docs/tensorboard

What a user sees after the first command, checked in a real browser rather than from the event
files (issue 28): TensorBoard serves ``--logdir`` on a free local port and a headless Chromium
(Debian: ``apt-get install chromium-headless-shell``; ``chromium`` and ``google-chrome`` work
too) renders each page after the app has loaded its data. The PNGs in docs/tensorboard were
made with the first two commands above.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BROWSERS = ("chromium-headless-shell", "chromium", "google-chrome", "chrome")
PAGES = ("scalars", "custom_scalars", "hparams")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_runs(url: str, timeout: float) -> None:
    """Until TensorBoard serves ``url`` and has read at least one run."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/data/runs", timeout=5) as response:
                if response.read().strip() not in (b"", b"[]"):
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"TensorBoard at {url} read no run in {timeout:.0f} s")


def screenshot(browser: str, url: str, path: Path, size: str) -> None:
    # --virtual-time-budget lets the app's own timers (data loading, chart animation) run
    # before the capture, so the charts are drawn rather than their spinners.
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={size}", "--virtual-time-budget=20000",
                    f"--screenshot={path.resolve()}", url],
                   check=True, capture_output=True, timeout=180)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--logdir", default="bench_out/quick",
                        help="TensorBoard log directory (default: the quick benchmark's)")
    parser.add_argument("--out", default="tensorboard_screenshots", help="where the PNGs go")
    parser.add_argument("--browser", default=None,
                        help=f"browser executable (default: the first of {', '.join(BROWSERS)})")
    parser.add_argument("--size", default="1600,1100", help="window WIDTH,HEIGHT in pixels")
    args = parser.parse_args(argv)
    logdir = Path(args.logdir)
    if not logdir.is_dir():
        print(f"error: --logdir {logdir} is not a directory; run `python run.py benchmark` "
              "first (it writes bench_out/quick)", file=sys.stderr)
        return 2
    browser = shutil.which(args.browser) if args.browser else next(
        filter(None, map(shutil.which, BROWSERS)), None)
    if browser is None:
        print(f"error: no browser found ({args.browser or ', '.join(BROWSERS)}); on Debian: "
              "apt-get install chromium-headless-shell, or pass --browser PATH", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port),
         "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_runs(url, timeout=120)
        for page in PAGES:
            path = out / f"{page}.png"
            screenshot(browser, f"{url}/#{page}", path, args.size)
            print(path)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
