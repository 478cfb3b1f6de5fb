"""The `jem` command line: a thin layer over the library.

Each sub-command parses its options and calls one public function of torchjem.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .config import CONFIG_DIR, config_reference, merge, parse_overrides
from .errors import ConfigError, InputError, Interrupted, UserError, one_line

log = logging.getLogger("torchjem")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", default=None, help="where the command runs: auto (CUDA when available), cpu, cuda or cuda:N"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the command's seed: a new run's (train, sweep, demo; default the config's), or that of the chains, "
        "noise and attacks on a run (sample, eval, attack; default the run's own, so a command repeats its figures)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for torch (torch.set_num_threads); default: torch's own choice. On a busy machine "
        "fewer are often much faster: on a loaded 2-core machine two threads are many times slower than one",
    )


def _as_config(args: argparse.Namespace, *keys: str) -> dict[str, object]:
    """Options that are also config keys (--device, --seed) as a config dict (values as typed)."""
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def _as_overrides(args: argparse.Namespace, *keys: str) -> list[str]:
    """The same as KEY=VALUE strings, for a sweep's spec (saved as the command line gave it)."""
    return [f"{k}={v}" for k, v in _as_config(args, *keys).items()]


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
    p.add_argument("--out", help="run directory (default runs/train)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint")
    p.add_argument("--clf-only", action="store_true", help="train a plain classifier baseline (train.clf_only=true)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (refused otherwise)")
    p.add_argument("--init-from", metavar="SOURCE", help="start from the weights of a run directory, a `jem export` "
                   "folder or a .safetensors file (train.init_from; no optimiser state, buffer or progress)")
    _common(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from .workflows.train import train_run

    extra = merge(parse_overrides(list(args.overrides)), _as_config(args, "device", "seed"))
    if args.clf_only:
        extra = merge(extra, {"train": {"clf_only": True}})
    if args.init_from is not None:
        extra = merge(extra, {"train": {"init_from": args.init_from}})
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces one: use one of them")
    if args.resume and args.init_from is not None:
        raise ConfigError("--resume continues a run from its own checkpoint and --init-from starts a new one: "
                          "use one of them")
    trainer, result = train_run(
        args.config, extra, out=args.out, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite
    )
    if trainer.is_main:
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
    from .workflows.sample import sample_run

    res = sample_run(
        args.run_dir, args.out, checkpoint=args.checkpoint, n=args.n, per_class=args.per_class, n_steps=args.steps,
        fresh=args.fresh, device=args.device or "auto", seed=args.seed,
    )
    print(f"wrote {res['unconditional']} and {res['conditional']}")
    return 0


# -- jem sweep --------------------------------------------------------------------------------
def add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="a stability study: train every setting of a grid (or sampled settings) x seeds, on Optuna",
        description="Each trial is a run directory SWEEP_DIR/trials/pNNN-sS; the study is stored in "
        "SWEEP_DIR/study.db (or --storage). Re-running the same command continues it; a divergence is "
        "recorded as a result. The report (heat maps of divergence rate and accuracy, the stable region, "
        "every trial) is written to SWEEP_DIR/report/sweep.html at the end, or with --report SWEEP_DIR.",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="fixed config overrides for every trial")
    p.add_argument("--config", "-c", help="YAML config file, or the name of a shipped recipe")
    p.add_argument("--grid", nargs="+", action="extend", default=[], metavar="KEY=V1,V2,...",
                   help="values of a config key to sweep (every combination is run)")
    p.add_argument("--range", nargs="+", action="extend", default=[], metavar="KEY=LOW:HIGH[:log]",
                   dest="ranges", help="a numeric range for the sampler (with --trials)")
    p.add_argument("--trials", type=int, default=None, help="settings drawn by the sampler instead of the grid")
    p.add_argument("--sampler", default="tpe", choices=["tpe", "random"], help="Optuna sampler for --trials")
    p.add_argument("--seeds", type=int, default=1, help="seeds per setting, counted from the config's seed")
    p.add_argument("--out", help="sweep directory (required unless --report)")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///SWEEP_DIR/study.db); "
                   "e.g. postgresql://user:pass@host/db for workers on several machines")
    p.add_argument("--study", help="study name in the storage (default: from the sweep directory's name)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (each --threads threads)")
    p.add_argument("--heartbeat", type=float, default=60.0,
                   help="seconds between a running trial's heartbeats; silent for 3: re-run")
    p.add_argument("--report", metavar="SWEEP_DIR", help="only write the report of SWEEP_DIR from its finished trials")
    _common(p)
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from .workflows.sweep import open_sweep, plan_sweep, quiet_trials_on_console, report_sweep, run_sweep

    quiet_trials_on_console()
    if args.report:
        files = report_sweep(open_sweep(args.report, storage=args.storage, study_name=args.study))
        print(f"wrote {files['html']}")
        return 0
    if not args.out:
        raise InputError("jem sweep needs --out SWEEP_DIR (or --report SWEEP_DIR)")
    overrides = list(args.overrides) + [g for g in args.grid if "," not in g]  # one value: fixed, not swept
    overrides += _as_overrides(args, "device", "seed")
    spec = plan_sweep(args.config, overrides, [g for g in args.grid if "," in g], ranges=args.ranges,
                      seeds=args.seeds, trials=args.trials, sampler=args.sampler)
    result = run_sweep(spec, args.out, storage=args.storage, study_name=args.study, workers=args.workers,
                       threads=args.threads, heartbeat=args.heartbeat, progress=not args.quiet)
    records = result["records"]
    diverged = sum(r.diverged for r in records)
    print(f"{len(records)} trials, {diverged} diverged; report: {result['report']['html']}")
    return 0


# -- jem demo ---------------------------------------------------------------------------------
def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a JEM and its baseline on digits, evaluate both, write the report")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a much shorter run (a smoke test, not the real figures)")
    _common(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from .workflows.demo import print_summary, run_demo

    summary = run_demo(
        args.out,
        device=args.device or "auto",
        seed=args.seed,
        quick=args.quick,
        progress=not args.quiet,
    )
    print_summary(summary)
    return 0


# -- jem attack -------------------------------------------------------------------------------
def add_attack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attack",
        help="PGD robust accuracy of JEM-0 / JEM-n (and a baseline), distal adversarials; re-evaluate saved ones",
        description="Attack RUN_DIR with PGD at each --eps, for each JEM-n setting (--refine-steps) and an optional "
        "--baseline run; writes RUN_DIR/attack/attack.json, robust_accuracy.png and the adversarials. "
        "With --evaluate-saved FILE --model RUN_DIR: the robust accuracy of any run on saved adversarials.",
    )
    p.add_argument("run_dir", nargs="?", help="a run directory written by `jem train`")
    p.add_argument("--norm", choices=["linf", "l2"], default="linf", help="threat model (default linf)")
    p.add_argument("--eps", type=float, nargs="+", default=None, help="radii in the [-1, 1] data scale, in any order")
    p.add_argument(
        "--refine-steps", type=int, nargs="+", default=None, help="SGLD steps n of JEM-n (default 0 1 10; 0 saved)"
    )
    p.add_argument("--baseline", metavar="RUN_DIR", help="also attack this run (e.g. the --clf-only baseline)")
    p.add_argument("--limit", type=int, default=None, help="attack only the first N test examples")
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/attack)")
    p.add_argument("--checkpoint", default="last", help="last, best, epoch_NNNN or a .pt file")
    p.add_argument("--steps", type=int, default=40, help="PGD iterations (default 40)")
    p.add_argument("--step-size", type=float, default=None, help="PGD step (default 2.5 * eps / steps)")
    p.add_argument("--restarts", type=int, default=1, help="random restarts; the best adversarial per input is kept")
    p.add_argument("--no-random-start", action="store_true", help="start PGD at the clean input")
    p.add_argument("--targeted", action="store_true", help="aim at a random wrong class per input")
    p.add_argument("--eot", type=int, default=1, help="gradient averaged over this many draws of the defence")
    p.add_argument("--chains", type=int, default=5, help="SGLD chains per input in JEM-n (default 5)")
    p.add_argument("--init-noise", type=float, default=None, help="noise added to the chains (default: data noise)")
    p.add_argument("--gradient", choices=["exact", "bpda"], default="exact", help="how PGD goes through the chains")
    p.add_argument("--no-transfer", action="store_true", help="do not also try JEM-0's adversarials on JEM-n")
    p.add_argument("--distal", type=int, default=100, help="distal adversarials to make (0: none)")
    p.add_argument("--batch-size", type=int, default=100, help="inputs attacked at once")
    p.add_argument(
        "--suite", choices=["standard", "quick"], default=None,
        help="after PGD, an AutoAttack-style suite (APGD-CE, targeted APGD-DLR, Square) keeping the worst case per "
        "input, and gradient-masking checks (docs/robustness.md); quick: fewer steps, targets and queries",
    )
    p.add_argument("--suite-limit", type=int, default=None, help="run the suite on the first N attacked inputs only")
    p.add_argument("--evaluate-saved", metavar="FILE", help="re-evaluate an adversarials_*.pt file instead")
    p.add_argument("--model", metavar="RUN_DIR", help="with --evaluate-saved: the run to evaluate (default RUN_DIR)")
    _common(p)
    p.set_defaults(func=cmd_attack)


def cmd_attack(args: argparse.Namespace) -> int:
    from .evaluate.robustness import PGDSettings
    from .workflows.attack import AttackOptions, attack_run, evaluate_saved_run

    pgd = PGDSettings(
        norm=args.norm, steps=args.steps, step_size=args.step_size, random_start=not args.no_random_start,
        restarts=args.restarts, targeted=args.targeted, eot=args.eot,
    )
    eps = sorted(set(args.eps)) if args.eps else None  # given in any order
    options = AttackOptions(
        pgd=pgd, eps=eps, refine_steps=args.refine_steps or ([0] if args.evaluate_saved else [0, 1, 10]),
        limit=args.limit, checkpoint=args.checkpoint, n_chains=args.chains, init_noise=args.init_noise,
        gradient=args.gradient, transfer=not args.no_transfer, distal=args.distal, batch_size=args.batch_size,
        device=args.device or "auto", seed=args.seed, progress=not args.quiet, suite=args.suite,
        suite_limit=args.suite_limit,
    )
    if args.evaluate_saved:
        model_dir = args.model or args.run_dir
        if model_dir is None:
            raise InputError("--evaluate-saved FILE needs --model RUN_DIR (the run to evaluate)")
        print(json.dumps(evaluate_saved_run(args.evaluate_saved, model_dir, options), indent=2))
        return 0
    if args.run_dir is None:
        raise InputError("jem attack needs RUN_DIR (or --evaluate-saved FILE --model RUN_DIR)")
    res = attack_run(args.run_dir, options, baseline=args.baseline, out=args.out)
    print(f"{'eps':>12}" + "".join(f"{name:>11}" for name in res.curves))
    for k, e in enumerate(res.eps):
        print(f"{e:12g}" + "".join(f"{acc[k]:11.4f}" for acc in res.curves.values()))
    print(f"n={res.n} {res.norm}; wrote {os.path.dirname(res.png_path)}")
    for name, a in (res.audit or {}).items():
        print(f"{name}, suite {a['suite']} on {a['n']} inputs: worst case " + " ".join(f"{w:.4f}" for w in a["worst"])
              + f"; checks: {' '.join(c['name'] + ('' if c['passed'] else ' FLAG') for c in a['checks'])}")
        print(f"  {a['verdict']}")
    return 0


# -- jem eval ---------------------------------------------------------------------------------
def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="the paper's evaluations (accuracy, calibration, OOD, generation) side by side, as one report",
        description="Evaluate RUN_DIR (and --baseline RUN_DIR side by side): accuracy and NLL (optionally after "
        "SGLD refinement), calibration (ECE/MCE, reliability diagram), OOD detection (px, py, pxgrad, maxlogit; "
        "AUROC, AUPR-in/out, FPR95), sample quality (FID/KID/Inception-style score with a named feature network, "
        "conditional accuracy) and, when RUN_DIR/attack/attack.json exists, robustness. Writes report.json, "
        "report.html (self-contained) and the PNGs into --out (default RUN_DIR/report).",
    )
    p.add_argument("run_dir", help="a run directory written by `jem train`")
    p.add_argument("--baseline", metavar="RUN_DIR", help="a second run shown side by side (e.g. the --clf-only one)")
    p.add_argument(
        "--ood",
        nargs="+",
        default=None,
        metavar="SET",
        help="OOD sets: uniform, gaussian, interp, letters (glyphs rendered from fonts), held_out (runs trained on "
        "data.classes), or a data set name (NAME or NAME:ROOT, see `jem datasets`); default: uniform gaussian "
        "interp [held_out]",
    )
    p.add_argument("--out", default=None, help="report directory (default RUN_DIR/report)")
    p.add_argument("--limit", type=int, default=None, help="at most N test examples, OOD inputs and samples")
    p.add_argument("--checkpoint", default="last", help="last, best, epoch_NNNN or a .pt file")
    p.add_argument("--refine-steps", type=int, default=0, help="also classify after N SGLD steps on the inputs")
    p.add_argument(
        "--scores", nargs="+", default=["px", "py", "pxgrad", "maxlogit"], help="OOD scores (default all four)"
    )
    p.add_argument("--bins", type=int, default=20, help="calibration bins (default 20, the paper's)")
    p.add_argument(
        "--feature-net",
        default="auto",
        help="auto (a classifier trained on the run's data, cached in RUN_DIR/feature_net) or inception:PATH "
        "(a local TorchScript Inception-v3 file)",
    )
    p.add_argument("--no-generation", action="store_true", help="skip sampling, FID/KID/IS and conditional accuracy")
    p.add_argument("--per-class", type=int, default=20, help="class-conditional samples per class (default 20)")
    p.add_argument("--sample-steps", type=int, default=None, help="SGLD steps per sample (default: as jem sample)")
    p.add_argument(
        "--input-noise",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="Gaussian noise on the test and OOD inputs (the JEM reference evaluation uses 0.03)",
    )
    _common(p)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from .workflows.eval import EvalOptions, evaluate_run, headline, headline_text

    options = EvalOptions(
        ood=args.ood, limit=args.limit, checkpoint=args.checkpoint, device=args.device or "auto",
        refine_steps=args.refine_steps, feature_net=args.feature_net, scores=args.scores, n_bins=args.bins,
        generate=not args.no_generation, per_class=args.per_class, sample_steps=args.sample_steps,
        input_noise=args.input_noise,
        seed=args.seed, progress=not args.quiet,
    )
    report = evaluate_run(args.run_dir, options, baseline=args.baseline, out=args.out)
    for role, m in report.models.items():
        print(headline_text(m.label, headline(report, role)))
    print(f"wrote {report.files['html']} (every figure: {report.files['json']})")
    return 0


# -- jem import / jem export --------------------------------------------------------------------
def add_interop(sub: argparse._SubParsersAction) -> None:
    from .workflows.interop import FORMATS

    p = sub.add_parser(
        "import",
        help="a published JEM / JEM++ / SADA-JEM checkpoint (or a jem export folder) as a run directory",
        description="Read CKPT with weights_only loading, map its Wide-ResNet onto torchjem's wrn and write an "
        "ordinary run directory, so that jem eval / sample / attack work on it (docs/interop.md). Formats: "
        + "; ".join(f"{k}: {v}" for k, v in FORMATS.items()),
    )
    p.add_argument("format", choices=list(FORMATS), help="where the checkpoint comes from")
    p.add_argument("ckpt", help="the checkpoint file (or export folder)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config changes, e.g. data.val_size=0.1")
    p.add_argument("--out", required=True, help="the run directory to write")
    p.add_argument("--data", default=None, help="data set name (default cifar10, cifar100 for 100 classes)")
    p.add_argument("--data-root", default=None, help="where its files are (config data.root)")
    p.add_argument("--norm", choices=["none", "batch", "instance", "layer"], default=None,
                   help="the model's norm, when the file cannot tell (instance vs layer)")
    p.add_argument("--uncond", action="store_true", help="the reference's --uncond model (F: its energy_output head)")
    p.add_argument("--image-size", type=int, default=32, help="input side in pixels (default 32)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    _common(p)
    p.set_defaults(func=cmd_import)
    p = sub.add_parser(
        "export",
        help="a run's weights as model.safetensors + torchjem.json (readable without torchjem)",
        description="Write RUN_DIR/export (or --out): model.safetensors (the JEM's state_dict), torchjem.json "
        "(net, data, config, source) and buffer.safetensors (the replay buffer). Every jem command and load_run "
        "accept the folder.",
    )
    p.add_argument("run_dir", help="a run directory")
    p.add_argument("--out", default=None, help="output folder (default RUN_DIR/export)")
    p.add_argument("--checkpoint", default="last", help="last, best, epoch_NNNN or a .pt file")
    p.add_argument("--no-buffer", action="store_true", help="leave the replay buffer out")
    _common(p)
    p.set_defaults(func=cmd_export)


def cmd_import(args: argparse.Namespace) -> int:
    from .workflows.interop import data_problem, import_checkpoint

    out = import_checkpoint(
        args.format, args.ckpt, args.out, data=args.data, data_root=args.data_root, norm=args.norm,
        uncond=args.uncond, image_size=args.image_size, overwrite=args.overwrite, overrides=args.overrides,
    )
    problem = data_problem(out)
    if problem is None:
        print(f"wrote run directory {out}: try `jem eval {out}`")
    else:  # jem eval would fail: the data root is set at import
        print(f"wrote run directory {out}, but its data cannot be loaded ({problem}); before `jem eval`, import "
              "again with --data-root DIR (or data.root=DIR) and --overwrite")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .workflows.interop import export_run

    out = export_run(args.run_dir, args.out, args.checkpoint, buffer=not args.no_buffer)
    print(f"wrote the export {out} (safetensors + JSON; `jem eval {out}` and `jem import torchjem {out}` read it)")
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
    print("or an import path package.module:factory (any callable returning an nn.Module) as net.name")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from .data import list_datasets

    print("\n".join(list_datasets()))
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        first = path.read_text().splitlines()[0].lstrip("# ") if path.stat().st_size else ""
        print(f"{path.stem}: {first}")
    return 0


# Sub-commands, in the order `jem --help` lists them.
COMMANDS = [add_train, add_sample, add_eval, add_attack, add_sweep, add_interop, add_demo, add_lists]


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
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides may also come after options: `jem train --quiet a=1 --seed 2 b=3`
        if args.command not in ("train", "import", "sweep") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    rank = os.environ.get("RANK", "0")  # set by torchrun: ranks other than 0 log warnings only, tagged
    if rank == "0":
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    else:
        logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s [rank {rank}] %(message)s")
    try:
        threads = getattr(args, "threads", None)
        if threads is not None:  # before the command: by default torch's own setting is left alone
            if threads < 1:
                raise InputError(f"--threads must be >= 1, got {threads}")
            import torch

            torch.set_num_threads(threads)
            try:
                torch.set_num_interop_threads(threads)
            except RuntimeError:  # settable once per process, and not after parallel work started
                log.debug("inter-op threads left at %d", torch.get_num_interop_threads())
        return args.func(args)
    except UserError as e:  # anything else is a bug: its traceback stays
        print(f"jem {args.command}: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except Interrupted as e:  # the run saved its checkpoint: one line with the command that continues it
        if rank == "0":
            print(f"jem {args.command}: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside training: nothing to save
        print(f"jem {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
