"""Screenshot TensorBoard's default tab (Time Series) for a run folder in headless Chromium, and
check that ``val/ic/acc`` (as its copy ``0_headline/val/ic/acc``, the group Time Series sorts first) is on its first screen.

    .venv/bin/python experiments/dashboard/screenshot.py runs/induction_default/version_0 --out dashboard.png

Needs a ``chromium`` binary (Debian: ``apt-get install chromium``). "First screen" is read from the
page's DOM: the tag must be among the card titles of the first ``--first_cards`` cards (what a
1400 x 1000 window shows), and its chart must hold a drawn curve. Exits 1 when either fails.

The page is opened with TensorBoard's ``forceSVG`` feature flag. Its default charts draw with WebGL
into a worker's canvas, which a headless Chromium screenshot leaves blank (axes and data table,
no curve: a screenshot that looks like an empty run); as SVG the curves are in the screenshot and
in the DOM, where the check reads them.
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
        page = url + "?forceSVG=true#timeseries"
        for _ in range(120):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000", "--virtual-time-budget=20000"]
        subprocess.run([*flags, f"--screenshot={args.out.resolve()}", page], check=True, capture_output=True, timeout=120)
        dom = subprocess.run([*flags, "--dump-dom", page], check=True, capture_output=True, text=True, timeout=120).stdout
    finally:
        tb.terminate()
        tb.wait(10)
    cards = card_titles(dom)
    print(f"screenshot: {args.out}; first cards: {cards[: args.first_cards]}")
    if (where := first_screen_card(cards, args.tag, args.first_cards)) is None:
        sys.exit(f"{args.tag} (or {HEADLINE_GROUP}/{args.tag}) is not among the first {args.first_cards} of {len(cards)} cards: {cards[: args.first_cards]}")
    points = drawn_points(dom, cards[where])
    if points < 2:
        sys.exit(f"{cards[where]}: card {where + 1} is on the first screen but its chart draws no curve ({points} points)")
    print(f"{args.tag}: card {where + 1} ({cards[where]}), curve drawn ({points} points)")


def card_titles(dom: str) -> list[str]:
    """The Time Series cards' tags, in page order, from the dumped DOM."""
    return re.findall(r'class="tag"[^>]*title="([^"]+)"', dom)


def drawn_points(dom: str, tag: str) -> int:
    """Points of the longest data curve in ``tag``'s card (its SVG line paths: ``M x,y L x,y ...``); 0 when
    the card is missing or draws none (icons' paths do not count: they are not ``M<float>,<float>L`` runs)."""
    titles = [(m.start(), m.group(1)) for m in re.finditer(r'class="tag"[^>]*title="([^"]+)"', dom)]
    for i, (pos, title) in enumerate(titles):
        if title == tag:
            card = dom[pos : titles[i + 1][0] if i + 1 < len(titles) else len(dom)]
            curves = re.findall(r'<path[^>]*\sd="(M-?[\d.]+,-?[\d.]+(?:L-?[\d.]+,-?[\d.]+)+)"', card)
            return max((c.count("L") + 1 for c in curves), default=0)
    return 0


def first_screen_card(cards: list[str], tag: str, first_cards: int) -> int | None:
    """Index of the first card among ``cards[:first_cards]`` showing ``tag`` itself or its headline
    copy (``0_headline/<tag>``, see clamp.scalars), or None when neither is on the first screen."""
    wanted = {tag, f"{HEADLINE_GROUP}/{tag}"}
    return next((i for i, c in enumerate(cards[:first_cards]) if c in wanted), None)


if __name__ == "__main__":
    main()
