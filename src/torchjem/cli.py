"""The `jem` command line: a thin layer over the library.

Each sub-command parses its options and calls one public function of torchjem.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import ConfigError, config_reference

log = logging.getLogger("torchjem")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=None, help="seed for every RNG of the command")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _seed(args: argparse.Namespace) -> None:
    if getattr(args, "seed", None) is not None:
        from .training import seed_everything

        seed_everything(args.seed)


# -- jem train --------------------------------------------------------------------------------
def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a JEM (or a plain classifier) from a YAML config plus overrides",
        description="Train a JEM. Options come from defaults, then --config FILE, then KEY=VALUE "
        "overrides (e.g. train.epochs=5 net.kwargs.width=32). The resolved config is saved in "
        "the run directory. Every option:\n\n" + config_reference(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, dotted keys")
    p.add_argument("--config", "-c", help="YAML config file, or the name of a shipped recipe (see `jem recipes`)")
    p.add_argument("--out", help="run directory (config key out)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint")
    p.add_argument("--clf-only", action="store_true", help="train a plain classifier baseline (train.clf_only=true)")
    _common(p)
    p.set_defaults(func=cmd_train)


def resolve_recipe(name: str | None) -> str | None:
    """A config path, or the name of a recipe shipped in torchjem/configs."""
    if name is None or Path(name).is_file():
        return name
    shipped = Path(__file__).parent / "configs" / f"{Path(name).stem}.yaml"
    if shipped.is_file():
        return str(shipped)
    raise ConfigError(f"config {name!r} is neither a file nor a shipped recipe; see `jem recipes`")


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .training import Trainer

    extra = list(args.overrides)
    for key, value in (("device", args.device), ("seed", args.seed), ("out", args.out)):
        if value is not None:
            extra.append(f"{key}={value}")
    if args.clf_only:
        extra.append("train.clf_only=true")
    if args.resume:
        trainer = Trainer.resume(args.resume, progress=not args.quiet, overrides=extra)
    else:
        cfg = load_config(resolve_recipe(args.config), extra)
        trainer = Trainer(cfg, progress=not args.quiet)
    result = trainer.fit()
    print(json.dumps(result, indent=2))
    return 0


# -- jem sample -------------------------------------------------------------------------------
def add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="write PNG grids of unconditional and class-conditional samples")
    p.add_argument("run_dir", help="a run directory written by `jem train`")
    p.add_argument("--checkpoint", default="last", help="last, best, epoch_NNNN or a .pt file")
    p.add_argument("--n", type=int, default=100, help="unconditional samples")
    p.add_argument("--per-class", type=int, default=10, help="class-conditional samples per class")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="SGLD steps (default: 0 more for buffer samples, the run's K for conditional and fresh chains)",
    )
    p.add_argument("--fresh", action="store_true", help="start chains from U(-1,1) noise instead of the replay buffer")
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/samples)")
    _common(p)
    p.set_defaults(func=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    from .run import RunDir, load_run
    from .samples import write_sample_grids

    _seed(args)
    run = load_run(args.run_dir, args.checkpoint, args.device or "auto")
    meta = run.state["data"]
    buffer = None if args.fresh else run.buffer
    if buffer is None and not args.fresh:
        log.warning("run has no replay buffer (a clf_only run?): sampling from fresh chains")
    out = Path(args.out) if args.out else RunDir(args.run_dir).samples
    res = write_sample_grids(
        run.jem,
        run.sampler,
        tuple(meta["shape"]),
        int(meta["n_classes"]),
        out,
        buffer,
        args.n,
        args.per_class,
        args.steps,
    )
    print(f"wrote {res['unconditional']} and {res['conditional']}")
    return 0


# -- jem demo ---------------------------------------------------------------------------------
def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a JEM and its baseline on digits, evaluate both, write the report")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a much shorter run (a smoke test, not the real figures)")
    _common(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import print_summary, run_demo

    summary = run_demo(
        args.out, device=args.device or "auto", seed=args.seed or 1, quick=args.quick, progress=not args.quiet
    )
    print_summary(summary)
    return 0


# -- small listings ---------------------------------------------------------------------------
def add_lists(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("nets", help="list the registered networks and their options").set_defaults(func=cmd_nets)
    sub.add_parser("datasets", help="list the data sets that `data.name` accepts").set_defaults(func=cmd_datasets)
    sub.add_parser("recipes", help="list the shipped config recipes").set_defaults(func=cmd_recipes)
    sub.add_parser("config", help="print every config option with its default").set_defaults(
        func=lambda a: print(config_reference()) or 0
    )


def cmd_nets(args: argparse.Namespace) -> int:
    from .nets import list_nets, net_options

    for name in list_nets():
        print(f"{name}: {', '.join(net_options(name))}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from .data import list_datasets

    print("\n".join(list_datasets()))
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    for path in sorted((Path(__file__).parent / "configs").glob("*.yaml")):
        first = path.read_text().splitlines()[0].lstrip("# ") if path.stat().st_size else ""
        print(f"{path.stem}: {first}")
    return 0


# Sub-commands, in the order `jem --help` lists them.
COMMANDS = [add_train, add_sample, add_demo, add_lists]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jem",
        description="torchjem: train any classifier as a Joint Energy-based Model, sample from it, "
        "evaluate it as in the JEM paper and write one report.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"jem {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
