"""Step 2 of the example pipeline: "train" on what step 1 prepared.

The data comes as the input ``data`` (``CELERY_AGENT_INPUT_DATA``: the local path of step 1's
``rows.csv``, fetched by the worker from the artifact store), or from ``--data PATH`` by hand.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=os.environ.get("CELERY_AGENT_INPUT_DATA"))
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    if not args.data:
        print("train: no data: give --data PATH or the input 'data'", file=sys.stderr)
        return 2
    rows = Path(args.data).read_text().splitlines()[1:]  # (after the header)
    print(f"train: {args.epochs} epoch(s) on {len(rows)} rows, done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
