"""A small experiment to search over: a decision tree on scikit-learn's digits (shipped with the
wheel, nothing downloaded). It reports the validation accuracy after each cross-validation fold as
the metric ``val_acc`` (the running mean, so the last value is the cross-validated accuracy):

    celery-agent search examples/search/base.yaml --param max_depth=int:2:12 \
        --param criterion=choice:gini,entropy --objective val_acc --trials 8 --parallel 4 --wait

Without celery-agent installed in the run's environment it prints the documented metric line.
"""

import argparse
import json

from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedKFold
from sklearn.tree import DecisionTreeClassifier

try:
    from celery_agent.metrics import report
except ImportError:

    def report(name, value, step=None):
        body = {"name": name, "value": float(value), "step": step}
        print("@@celery-agent:metric " + json.dumps(body), flush=True)


def main():
    parser = argparse.ArgumentParser(description="decision tree on digits")
    parser.add_argument("--max_depth", type=int, default=4)
    parser.add_argument("--min_samples_leaf", type=int, default=1)
    parser.add_argument("--criterion", default="gini")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    x, y = load_digits(return_X_y=True)
    folds = StratifiedKFold(args.folds, shuffle=True, random_state=args.seed)
    scores = []
    for step, (train, test) in enumerate(folds.split(x, y)):
        model = DecisionTreeClassifier(
            max_depth=args.max_depth,
            min_samples_leaf=args.min_samples_leaf,
            criterion=args.criterion,
            random_state=args.seed,
        )
        scores.append(model.fit(x[train], y[train]).score(x[test], y[test]))
        report("val_acc", sum(scores) / len(scores), step=step)
    print(
        f"max_depth={args.max_depth} criterion={args.criterion} val_acc={scores and sum(scores) / len(scores):.4f}"
    )


if __name__ == "__main__":
    main()
