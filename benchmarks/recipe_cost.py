"""Predicted training cost of the shipped recipes, from their schedules alone (no training).

For each recipe it counts the passes its config will make (``torchjem.training.schedule.
predict_cost``: data, samples, SGLD steps, SAM's second pass, validation) over the data set's
training and validation sizes, in forward-pass units (forward 1, backward 2, input backward 1
per example), and divides by those of the same recipe with ``train.clf_only=true`` and
``optim.sam_rho=0`` (the plain classifier of the same network, data, epochs and optimiser, without
SAM's second pass: what the recipe's JEM is judged against, as ``mnist --clf-only`` is for the
MNIST recipes). The meter of a real run counts the same passes (tests/test_schedule_cost.py); CPU or
GPU seconds follow the units only roughly (the sample pass and SGLD steps are not exactly a
forward each), so measured figures go beside these in docs/recipes.md.

    python benchmarks/recipe_cost.py            # a Markdown table of every recipe below
    python benchmarks/recipe_cost.py mnist_fast cifar10_fast
"""

from __future__ import annotations

import sys

from torchjem.config import load_config
from torchjem.training.schedule import predict_cost

# training / validation examples of each recipe's data set after its val_size split
SIZES = {"mnist": (54000, 6000), "cifar10": (45000, 5000), "cifar100": (45000, 5000), "svhn": (68257, 5000),
         "mnist1d": (3600, 400), "digits": (1294, 144)}
RECIPES = ["mnist", "mnist_sadajem", "mnist_sadajem_head", "mnist_fast", "sadajem_cifar10", "cifar10_fast",
           "sadajem_cifar100", "cifar100_fast", "cifar10_paper"]


def row(recipe: str) -> str:
    cfg = load_config(recipe)
    n_train, n_val = SIZES[cfg.data.name]
    jem = predict_cost(cfg, n_train=n_train, n_val=n_val)
    plain = load_config(recipe, {"train": {"clf_only": True}, "optim": {"sam_rho": 0.0}})
    clf = predict_cost(plain, n_train=n_train, n_val=n_val)
    by_kind = ", ".join(f"{k} {sum(v.values()) / 1e6:.1f}M" for k, v in jem.passes.items())
    return (f"| `{recipe}` | {cfg.data.name} ({n_train} / {n_val}) | {cfg.train.epochs} | {jem.units / 1e6:.1f}M "
            f"| {clf.units / 1e6:.1f}M | **{jem.units / clf.units:.2f}x** | {by_kind} |")


def main(argv: list[str]) -> None:
    print("| recipe | data (train / val) | epochs | JEM units | classifier units | ratio | passes by kind |")
    print("|---|---|---|---|---|---|---|")
    for recipe in argv or RECIPES:
        print(row(recipe))


if __name__ == "__main__":
    main(sys.argv[1:])
