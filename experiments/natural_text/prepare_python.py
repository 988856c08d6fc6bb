"""Write the running Python's standard library source as a JSON-lines corpus, one file per document.

    python experiments/natural_text/prepare_python.py            # -> data/python_stdlib.jsonl

Ordinary code, reachable offline on any machine with Python (issue 20.1 names it beside the KJV
Bible). Code repeats identifiers within a file far more than prose repeats words, which is the
data property that decides how soon induction heads form (Aoyama et al. 2025), and the 3.11
standard library with its tests is ~31 MB of source, ~7x the KJV Bible, so a 2-hour run makes a
few passes over it instead of ~50. Files are read in sorted path order; a file that is not UTF-8
is skipped (and counted). The corpus depends on the Python version: the script prints it, and the
run's config.yaml records the file's content hash through the token cache key.
"""

from __future__ import annotations

import argparse
import json
import platform
import sysconfig
from pathlib import Path

SKIP = {"site-packages", "dist-packages", "__pycache__"}


def sources(root: Path) -> tuple[list[tuple[str, str]], int]:
    """(relative path, text) for every UTF-8 ``.py`` file under ``root``; and how many were skipped."""
    out, skipped = [], 0
    for path in sorted(root.rglob("*.py")):
        if SKIP & set(path.relative_to(root).parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            skipped += 1
            continue
        if text.strip():
            out.append((str(path.relative_to(root)), text))
    return out, skipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dest", nargs="?", default="data/python_stdlib.jsonl")
    args = ap.parse_args()
    root = Path(sysconfig.get_paths()["stdlib"])
    files, skipped = sources(root)
    dest = Path(args.dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("w", encoding="utf-8") as f:
        for rel, text in files:
            f.write(json.dumps({"path": rel, "text": text}) + "\n")
    chars = sum(len(t) for _, t in files)
    print(f"{dest}: Python {platform.python_version()} standard library ({root}): {len(files)} files, {chars} characters; {skipped} not UTF-8, skipped")


if __name__ == "__main__":
    main()
