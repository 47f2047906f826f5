"""Step 1 of the example pipeline: "prepare" some data (``--fail 1`` makes it fail)."""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--fail", type=int, default=0)
    args = parser.parse_args()
    if args.fail:
        print("prepare: the data source is broken", file=sys.stderr)
        return 1
    print(f"prepare: {args.rows} rows ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
