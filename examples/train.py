"""A small experiment: logistic regression by gradient descent on synthetic data, standard library
plus PyYAML. Its parameters come from argparse, so celery-agent can override them without edits:

    celery-agent submit examples/train.py --req pyyaml -p lr=0.5 --wait -- --epochs 20
"""

import argparse
import math
import os
import random

import yaml


def make_data(n, seed):
    rng = random.Random(seed)
    points = []
    for _ in range(n):
        x1, x2 = rng.gauss(0, 1), rng.gauss(0, 1)
        label = 1 if x1 + 0.5 * x2 + rng.gauss(0, 0.3) > 0 else 0
        points.append(((x1, x2), label))
    return points


def train(points, lr, epochs):
    w1 = w2 = b = 0.0
    for epoch in range(1, epochs + 1):
        loss = g1 = g2 = gb = 0.0
        for (x1, x2), y in points:
            p = 1 / (1 + math.exp(-(w1 * x1 + w2 * x2 + b)))
            loss -= y * math.log(p + 1e-12) + (1 - y) * math.log(1 - p + 1e-12)
            g1, g2, gb = g1 + (p - y) * x1, g2 + (p - y) * x2, gb + (p - y)
        n = len(points)
        w1, w2, b = w1 - lr * g1 / n, w2 - lr * g2 / n, b - lr * gb / n
        print(f"epoch {epoch} loss {loss / n:.4f}", flush=True)
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
    result = train(make_data(args.samples, args.seed), args.lr, args.epochs)
    out = os.environ.get("CELERY_AGENT_OUTPUT_DIR", ".")
    with open(os.path.join(out, "result.yaml"), "w") as fh:
        yaml.safe_dump(result, fh)
    print(f"accuracy {result['accuracy']:.3f}; result in {out}/result.yaml", flush=True)


if __name__ == "__main__":
    main()
