"""Screenshot TensorBoard's default tab (Time Series) for a run folder in headless Chromium, and
check that ``val/ic/acc`` (as its copy ``0_headline/val/ic/acc``, the group Time Series sorts first) is on its first screen.

    .venv/bin/python experiments/dashboard/screenshot.py runs/induction_default/version_0 --out dashboard.png

Needs a ``chromium`` binary (Debian: ``apt-get install chromium``). "First screen" is read from the
page's DOM: the tag must be among the card titles of the first ``--first_cards`` cards (what a
1400 x 1000 window shows). Exits 1 when it is not.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from clamp.scalars import HEADLINE_GROUP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    sys.exit("no chromium binary on PATH (Debian: apt-get install chromium)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, default=Path("dashboard.png"))
    ap.add_argument("--tag", default="val/ic/acc")
    ap.add_argument("--first_cards", type=int, default=6)
    args = ap.parse_args()
    port = free_port()
    tb = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(args.run), "--port", str(port), "--host", "127.0.0.1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(120):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000", "--virtual-time-budget=20000"]
        subprocess.run([*flags, f"--screenshot={args.out.resolve()}", url + "#timeseries"], check=True, capture_output=True, timeout=120)
        dom = subprocess.run([*flags, "--dump-dom", url + "#timeseries"], check=True, capture_output=True, text=True, timeout=120).stdout
    finally:
        tb.terminate()
        tb.wait(10)
    cards = card_titles(dom)
    print(f"screenshot: {args.out}; first cards: {cards[: args.first_cards]}")
    if (where := first_screen_card(cards, args.tag, args.first_cards)) is None:
        sys.exit(f"{args.tag} (or {HEADLINE_GROUP}/{args.tag}) is not among the first {args.first_cards} of {len(cards)} cards: {cards[: args.first_cards]}")
    print(f"{args.tag}: card {where + 1} ({cards[where]})")


def card_titles(dom: str) -> list[str]:
    """The Time Series cards' tags, in page order, from the dumped DOM."""
    return re.findall(r'class="tag"[^>]*title="([^"]+)"', dom)


def first_screen_card(cards: list[str], tag: str, first_cards: int) -> int | None:
    """Index of the first card among ``cards[:first_cards]`` showing ``tag`` itself or its headline
    copy (``0_headline/<tag>``, see clamp.scalars), or None when neither is on the first screen."""
    wanted = {tag, f"{HEADLINE_GROUP}/{tag}"}
    return next((i for i, c in enumerate(cards[:first_cards]) if c in wanted), None)


if __name__ == "__main__":
    main()
