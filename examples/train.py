"""A small experiment: logistic regression by gradient descent on synthetic data, standard library
plus PyYAML. Its parameters come from argparse, so celery-agent can override them without edits:

    celery-agent submit examples/train.py --req pyyaml -p lr=0.5 --wait -- --epochs 20

It resumes: after each epoch it writes a checkpoint under $CELERY_AGENT_CHECKPOINT_DIR (the
output folder's checkpoints/, synced to the artifact store as the run goes), to a temporary name
renamed into place, and at its start it continues from the last one it finds there. A run
re-queued after its worker was lost, or made with `celery-agent rerun RUN --resume`, finds the
checkpoints restored there before it starts.
"""

import argparse
import json
import math
import os
import random
from pathlib import Path

import yaml


def make_data(n, seed):
    rng = random.Random(seed)
    points = []
    for _ in range(n):
        x1, x2 = rng.gauss(0, 1), rng.gauss(0, 1)
        label = 1 if x1 + 0.5 * x2 + rng.gauss(0, 0.3) > 0 else 0
        points.append(((x1, x2), label))
    return points


def checkpoint_dir():
    """Where checkpoints go: the folder the agent syncs (None outside the agent: none kept)."""
    folder = os.environ.get("CELERY_AGENT_CHECKPOINT_DIR")
    return Path(folder) if folder else None


def last_checkpoint(folder):
    """The newest checkpoint in ``folder`` (epoch-N.json), or None."""
    found = sorted(folder.glob("epoch-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    return json.loads(found[-1].read_text()) if found else None


def save_checkpoint(folder, state, keep=3):
    """Write ``state`` to a temporary name, rename it into place (atomic), keep the last few."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"epoch-{state['epoch']}.json.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, folder / f"epoch-{state['epoch']}.json")
    (folder / f"epoch-{state['epoch'] - keep}.json").unlink(missing_ok=True)


def train(points, lr, epochs, folder):
    w1 = w2 = b = 0.0
    start, n = 1, len(points)
    loss = 0.0
    state = last_checkpoint(folder) if folder else None
    if state is not None:
        w1, w2, b, start = state["w1"], state["w2"], state["b"], state["epoch"] + 1
        loss = state["loss"] * n
        attempt = os.environ.get("CELERY_AGENT_ATTEMPT", "1")
        print(f"resuming from epoch {state['epoch']} (attempt {attempt})", flush=True)
    for epoch in range(start, epochs + 1):
        loss = g1 = g2 = gb = 0.0
        for (x1, x2), y in points:
            p = 1 / (1 + math.exp(-(w1 * x1 + w2 * x2 + b)))
            loss -= y * math.log(p + 1e-12) + (1 - y) * math.log(1 - p + 1e-12)
            g1, g2, gb = g1 + (p - y) * x1, g2 + (p - y) * x2, gb + (p - y)
        n = len(points)
        w1, w2, b = w1 - lr * g1 / n, w2 - lr * g2 / n, b - lr * gb / n
        print(f"epoch {epoch} loss {loss / n:.4f}", flush=True)
        if folder:
            save_checkpoint(folder, {"epoch": epoch, "w1": w1, "w2": w2, "b": b, "loss": loss / n})
    correct = sum((w1 * x1 + w2 * x2 + b > 0) == (y == 1) for (x1, x2), y in points)
    return {"w1": w1, "w2": w2, "b": b, "accuracy": correct / len(points), "loss": loss / n}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"training with lr={args.lr} epochs={args.epochs}", flush=True)
    result = train(make_data(args.samples, args.seed), args.lr, args.epochs, checkpoint_dir())
    out = os.environ.get("CELERY_AGENT_OUTPUT_DIR", ".")
    with open(os.path.join(out, "result.yaml"), "w") as fh:
        yaml.safe_dump(result, fh)
    print(f"accuracy {result['accuracy']:.3f}; result in {out}/result.yaml", flush=True)


if __name__ == "__main__":
    main()
