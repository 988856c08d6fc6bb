"""Write the King James Bible as plain text, one chapter per paragraph, from Debian's ``bible-kjv-text``.

    sudo apt-get install bible-kjv-text      # public domain, ~4 MB; installs the `bible` program
    python experiments/natural_text/prepare_kjv.py                                  # -> data/kjv.txt
    python experiments/natural_text/prepare_kjv.py data/kjv_rep.txt --repeat 0.25   # more exact repetition

Verse numbers and chapter headers are dropped; verses stay one per line. The text DataModule
(``sample_by: paragraph``) then treats each of the 1189 chapters as a document. ``--repeat p``
follows each verse by an exact copy of itself with probability ``p`` (seed 0): natural text
with more in-context repetition, the data property that decides how soon induction heads form
(Aoyama et al. 2025).
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dest", nargs="?", default="data/kjv.txt")
    ap.add_argument("--repeat", type=float, default=0.0, help="probability that a verse is immediately repeated")
    args = ap.parse_args()
    if shutil.which("bible") is None:
        sys.exit("the `bible` program is missing: sudo apt-get install bible-kjv-text")
    raw = subprocess.run(["bible", "ge1:1-re22:21"], capture_output=True, text=True, check=True).stdout
    chs = chapters(raw)
    if args.repeat:
        rng = random.Random(0)
        chs = ["\n".join(v for verse in c.split("\n") for v in ([verse, verse] if rng.random() < args.repeat else [verse])) for c in chs]
    Path(args.dest).parent.mkdir(parents=True, exist_ok=True)
    Path(args.dest).write_text("\n\n".join(chs) + "\n")
    print(f"{args.dest}: {len(chs)} chapters, {sum(len(c) for c in chs)} characters")


if __name__ == "__main__":
    main()
