"""Write the King James Bible as plain text, one chapter per paragraph, from Debian's ``bible-kjv-text``.

    sudo apt-get install bible-kjv-text      # public domain, ~4 MB; installs the `bible` program
    python experiments/natural_text/prepare_kjv.py                                  # -> data/kjv.txt
    python experiments/natural_text/prepare_kjv.py data/kjv_rep.txt --repeat 0.25   # more exact repetition
    python experiments/natural_text/prepare_kjv.py data/kjv_needles.txt --repeat 1.0 --needles 0.15

Verse numbers and chapter headers are dropped; verses stay one per line. The text DataModule
(``sample_by: paragraph``) then treats each of the 1189 chapters as a document. ``--repeat p``
follows each verse by an exact copy of itself with probability ``p`` (seed 0): natural text
with more in-context repetition, the data property that decides how soon induction heads form
(Aoyama et al. 2025). ``--needles q`` adds, after a verse with probability ``q``, a line of 6-10
words drawn uniformly from the Bible's word types, and the same line again two lines later: text
that can only be predicted by retrieving an arbitrary earlier span, the training signal for
retrieval heads (Wu et al. 2024) that fluent text rarely gives a small model.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path


def chapters(raw: str) -> list[str]:
    out: list[list[str]] = []
    for line in raw.splitlines():
        if re.match(r"^\S.* \d+$", line):  # "Genesis 1": a new chapter
            out.append([])
        elif m := re.match(r"^\s+\d+ (.*)$", line):  # "  3 And God said, ..."
            out[-1].append(m[1].strip())
        elif line.strip() and out and out[-1]:  # continuation of the verse above
            out[-1][-1] += " " + line.strip()
    return ["\n".join(verses) for verses in out if verses]


def with_needles(chs: list[str], q: float, rng: random.Random) -> list[str]:
    """Insert random-word lines, each copied two lines later (see the module docstring)."""
    words = sorted({w for c in chs for w in re.findall(r"[A-Za-z]+", c)})
    out = []
    for c in chs:
        lines, pending = [], []  # pending: [verses still to wait, needle]
        for verse in c.split("\n"):
            lines.append(verse)
            for p in pending:
                p[0] -= 1
            lines += [n for k, n in pending if k == 0]
            pending = [p for p in pending if p[0] > 0]
            if rng.random() < q:
                needle = " ".join(rng.choice(words) for _ in range(rng.randint(6, 10)))
                lines.append(needle)
                pending.append([2, needle])
        lines += [n for _, n in pending]
        out.append("\n".join(lines))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dest", nargs="?", default="data/kjv.txt")
    ap.add_argument("--repeat", type=float, default=0.0, help="probability that a verse is immediately repeated")
    ap.add_argument("--needles", type=float, default=0.0, help="probability of a random-word line after a verse, copied two lines later")
    args = ap.parse_args()
    if shutil.which("bible") is None:
        sys.exit("the `bible` program is missing: sudo apt-get install bible-kjv-text")
    raw = subprocess.run(["bible", "ge1:1-re22:21"], capture_output=True, text=True, check=True).stdout
    chs = chapters(raw)
    if args.repeat:
        rng = random.Random(0)
        chs = ["\n".join(v for verse in c.split("\n") for v in ([verse, verse] if rng.random() < args.repeat else [verse])) for c in chs]
    if args.needles:
        chs = with_needles(chs, args.needles, random.Random(1))
    Path(args.dest).parent.mkdir(parents=True, exist_ok=True)
    Path(args.dest).write_text("\n\n".join(chs) + "\n")
    print(f"{args.dest}: {len(chs)} chapters, {sum(len(c) for c in chs)} characters")


if __name__ == "__main__":
    main()
