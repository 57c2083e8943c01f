"""Command line: ``python -m fishtune.report DIR [DIR ...] [--out OUT]`` (also the ``fishtune-report`` script).

Reads every result.json under the folders, writes the report into OUT (default ``DIR/report``) and prints
each file it wrote. Exit status 1 when no result was found, 2 when a folder is missing or OUT cannot be a
folder. A result.json that is not a valid result (another schema, a field of the wrong type) is skipped with
one line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fishtune-report", description="The paper's heatmaps, Table 2 and scaling plot from result.json files.")
    parser.add_argument("dirs", nargs="+", type=Path, help="folders holding result.json files (a sweep, several)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <first dir>/report)")
    parser.add_argument("--no-pdf", action="store_true", help="write PNG figures only")
    args = parser.parse_args(argv)
    for d in args.dirs:
        if not d.is_dir():
            print(f"error: {d} is not a folder", file=sys.stderr)
            return 2
    out = args.out if args.out is not None else args.dirs[0] / "report"
    if out.exists() and not out.is_dir():
        print(f"error: the report folder {out} is a file (give --out a folder)", file=sys.stderr)
        return 2
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: the report folder {out} cannot be created ({e.strerror or e})", file=sys.stderr)
        return 2
    from .build import build_report

    t0 = time.perf_counter()
    written = build_report(args.dirs, out, formats=("png",) if args.no_pdf else ("png", "pdf"))
    for path in written:
        print(path)
    results = next((p for p in written if p.name == "results.csv"), None)
    rows = sum(1 for _ in results.open()) - 1 if results else 0
    print(f"{len(written)} files, {rows} result rows, {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if rows == 0:
        print(f"warning: no result.json under {', '.join(map(str, args.dirs))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
