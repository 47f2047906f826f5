"""Step 1 of the example pipeline: "prepare" some data (``--fail 1`` makes it fail).

It writes ``rows.csv`` into its output folder (``CELERY_AGENT_OUTPUT_DIR``), which is kept in the
artifact store when it ends; the controller hands it to step 2 as the input ``data``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--fail", type=int, default=0)
    args = parser.parse_args()
    if args.fail:
        print("prepare: the data source is broken", file=sys.stderr)
        return 1
    out = Path(os.environ.get("CELERY_AGENT_OUTPUT_DIR", "."))
    lines = ["x,y", *(f"{i},{i * i}" for i in range(args.rows))]
    (out / "rows.csv").write_text("\n".join(lines) + "\n")
    print(f"prepare: {args.rows} rows ready in rows.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
