"""Run the benchmarks: `python bench/run.py [NAME ...]` (default: all). Each prints ratios measured
side by side in this one run against the obvious alternative; nothing here asserts a time."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import store

BENCHES = {"verify": store.bench_verify, "fetch": store.bench_fetch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", choices=[*BENCHES, []], help="benchmarks to run (default: all)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    for name in args.names or BENCHES:
        print(f"\n== {name} ==", flush=True)
        BENCHES[name](args.workdir)


if __name__ == "__main__":
    main()
