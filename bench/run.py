"""Run the benchmarks: `python bench/run.py [NAME ...]` (default: all). Each prints ratios measured
side by side in this one run against the obvious alternative; nothing here asserts a time."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import delta_bench, gateway_bench, image_bench, layout_bench, runtime_bench, store, warm_bench

BENCHES = {
    "verify": store.bench_verify,
    "fetch": store.bench_fetch,
    "runtime": runtime_bench.run,
    "gateway": gateway_bench.run,
    "layout": layout_bench.run,
    "image": image_bench.run,
    "delta": delta_bench.run,
    "warm": warm_bench.run,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", choices=[*BENCHES, []], help="benchmarks to run (default: all)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-"))
    for name in args.names or BENCHES:
        print(f"\n== {name} ==", flush=True)
        BENCHES[name](root / name)


if __name__ == "__main__":
    main()
