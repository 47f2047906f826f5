"""Step 2 of the example pipeline: "train" on what step 1 prepared."""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    print(f"train: {args.epochs} epoch(s) on {args.rows} rows, done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
