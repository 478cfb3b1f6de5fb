"""Mutation check: plant plausible one-line bugs in a copy of the package and see which the tests catch.

For each mutant below: copy src/ to a temporary folder, find the code by its source text (a
regular expression searched in every .py file of the copy, optionally after anchor texts such as
``class SGLD``), replace it, and run the test files written to catch that bug against the copy
(``PYTHONPATH`` points at it). A pattern that matches nowhere, or in more than one file, stops
the script with an error: the code moved and the mutant must be updated, rather than silently
testing nothing. First the unmutated copy must pass the same tests.

    python benchmarks/mutation_check.py              # every mutant (about a minute or two on 2 cores)
    python benchmarks/mutation_check.py px_sign ece_edge_rule   # some of them
    python benchmarks/mutation_check.py --list

Exit status 0 when every mutant is caught by the test named as its catcher, 1 otherwise, 2 when a
pattern is not found (or the unmutated copy fails). ``--src DIR`` copies DIR/torchjem instead of
this checkout's src/torchjem (the tests are always this checkout's).
Not part of CI or the test suite.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READ = r"(?<![\w.])self\.{}(?=\s*[,)])"  # an attribute read as an argument: f(..., self.x) / alpha=self.x)


@dataclass
class Mutant:
    name: str
    what: str
    pattern: str  # regular expression (re.S); the first match after the anchors is replaced
    replacement: str  # re.sub replacement
    tests: list[str]  # test files (or node ids) to run
    catcher: str  # the test written to catch it: a regular expression searched in the failing tests' ids
    anchors: list[str] = field(default_factory=list)  # texts found in order before the match
    kind: str = "required"  # required: listed in issue 24; extra: of our choice


OBJ = ["tests/test_objective_terms.py"]
CHAINS = ["tests/test_chain_noise.py"]
REWIND = ["tests/test_rewind.py"]
CALIB = ["tests/test_calibration.py"]
TERMS = "test_every_term_loss_stats_and_gradients_match_the_formulas"

MUTANTS = [
    Mutant("px_sign", "p(x) term's sign flipped",
           r"l_px\s*=\s*-\(\s*lpx_data\.mean\(\)\s*-\s*lpx_q\.mean\(\)\s*\)", "l_px = (lpx_data.mean() - lpx_q.mean())",
           OBJ, TERMS),
    Mutant("px_detach", "p(x) term's gradient cut (.detach())",
           r"(loss\s*=\s*loss\s*\+\s*self\.px\s*\*\s*l_px)\b(?!\.)", r"\1.detach()", OBJ, TERMS),
    Mutant("px_slice", "no-augmentation p(x) mode: data energies taken from the augmented slice",
           r"lpx_all\[\s*n\s*:\s*2\s*\*\s*n\s*\]", "lpx_all[:n]", OBJ, "px_on_unaugmented"),
    Mutant("pxy_sign", "p(x|y) term's sign flipped",
           r"l_pxy\s*=\s*-\(\s*f_data\s*-\s*f_q\s*\)", "l_pxy = (f_data - f_q)", OBJ, TERMS),
    Mutant("energy_l2_dropped", "energy_l2 penalty dropped",
           r"(loss\s*=\s*loss\s*\+\s*)self\.energy_l2\s*\*", r"\g<1>0.0 *", OBJ, TERMS),
    Mutant("sgld_noise_x10", "SGLD noise ten times too large",
           READ.format("noise"), "10 * self.noise", CHAINS, r"random_walk.*-sgld\]",
           anchors=["class SGLD", "def step"]),
    Mutant("rewind_forgets_buffer", "divergence rewind does not restore the replay buffer",
           r"self\.buffer\.load_state_dict\(\s*snap\[\s*[\"']buffer[\"']\s*\]\s*\)", "None", REWIND,
           "test_rewind_restores_the_snapshot_exactly"),
    Mutant("ece_edge_rule", "ECE bin-edge rule switched (an edge value to the lower bin)",
           r"(torch\.bucketize\(\s*\w+\s*,\s*\w+\s*,\s*right\s*=\s*)True", r"\1False", CALIB,  # code, not docs
           "test_a_confidence_exactly_on_a_bin_edge_goes_to_the_upper_bin"),
    # -- of our choice --------------------------------------------------------------------------
    Mutant("pyld_noise_x10", "PYLD noise ten times too large",
           READ.format("noise"), "10 * self.noise", CHAINS, r"random_walk.*-pyld\]",
           anchors=["class PYLD", "def step"], kind="extra"),
    Mutant("sgld_step_size_ignored", "SGLD step taken with size 1 whatever step_size says",
           READ.format("step_size"), "1.0", CHAINS, "test_sgld_step_is_drift_plus_noise",
           anchors=["class SGLD", "def step"], kind="extra"),
    Mutant("conditional_chain_on_px", "conditional SGLD chains ascend log p(x) instead of f(x)[y]",
           r"jem\.log_px\(x\)\s+if\s+y\s+is\s+None\s+else\s+jem\.log_pxy\(x,\s*y\)", "jem.log_px(x)", CHAINS,
           "test_conditional_sgld_follows_its_class_logit", anchors=["class SGLD", "def step"], kind="extra"),
    Mutant("buffer_not_written_back", "chains' final states not written back to the replay buffer",
           r"self\.buffer\.put\(\s*idx\s*,\s*x\s*\)", "None", CHAINS,
           "test_conditional_chains_from_the_replay_buffer", kind="extra"),
    Mutant("ce_over_all_examples", "cross-entropy averaged over all examples, unlabelled ones included",
           r"n_lab\s*=\s*labelled\.sum\(\)\.clamp_min\(1\)", "n_lab = len(y)", OBJ, TERMS, kind="extra"),
    Mutant("pxy_with_unlabelled", "p(x|y) samples drawn for unlabelled examples too (label -100 as 0)",
           r"y_l\s*=\s*y\[\s*y\s*!=\s*IGNORE\s*\]", "y_l = y.clamp_min(0)", OBJ, TERMS, kind="extra"),
    Mutant("x_px_not_noised", "data noise not added to the un-augmented p(x) batch",
           r"x_px\s*=\s*x_px\s*\+\s*self\.data_noise\s*\*\s*torch\.randn_like\(x_px\)", "x_px = x_px", OBJ,
           "test_data_noise_has_the_configured_sigma", kind="extra"),
    Mutant("rewind_forgets_optimizer", "divergence rewind does not restore the optimiser state",
           r"self\.optimizer\.load_state_dict\(\s*snap\[\s*[\"']optimizer[\"']\s*\]\s*\)", "None", REWIND,
           "test_rewind_restores_the_snapshot_exactly", kind="extra"),
    Mutant("snapshot_aliases_live_state", "the guard's snapshot is not a copy (it aliases the live tensors)",
           r"copy\.deepcopy\(", "dict(", REWIND, "test_rewind_restores_the_snapshot_exactly",
           anchors=["def snapshot"], kind="extra"),
]


class PatternError(RuntimeError):
    pass


def plant(src: Path, m: Mutant) -> str:
    """Apply ``m`` to the package copy under ``src``; returns 'file:line'. Raises PatternError when
    the code is not found exactly once (in one file)."""
    hits = []
    for path in sorted(src.rglob("*.py")):
        text = path.read_text()
        pos = 0
        for anchor in m.anchors:
            i = text.find(anchor, pos)
            if i < 0:
                break
            pos = i + len(anchor)
        else:
            match = re.compile(m.pattern, re.S).search(text, pos)
            if match:
                hits.append((path, text, match))
    if len(hits) != 1:
        where = ", ".join(str(p.relative_to(src)) for p, _, _ in hits) or "no file"
        raise PatternError(
            f"mutant {m.name}: pattern {m.pattern!r} (after {m.anchors or 'the start'}) found in {where}; expected "
            "exactly one file: the code has moved, update the mutant"
        )
    path, text, match = hits[0]
    new = match.expand(m.replacement)
    path.write_text(text[: match.start()] + new + text[match.end() :])
    return f"{path.relative_to(src)}:{text.count(chr(10), 0, match.start()) + 1}"


def run_tests(src: Path, tests: list[str]) -> tuple[int, list[str], str]:
    """(pytest's exit status, ids of the failed tests, output tail) for ``tests`` against ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", res.stdout, re.M)
    return res.returncode, failed, res.stdout[-2000:] + res.stderr[-2000:]


def fresh_copy(tmp: Path, origin: Path) -> Path:
    """A clean copy of the package ``origin``/torchjem under ``tmp``/src."""
    src = tmp / "src"
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(origin / "torchjem", src / "torchjem", ignore=shutil.ignore_patterns("__pycache__"))
    return src


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="mutants to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the folder holding the torchjem package to copy")
    args = ap.parse_args(argv)
    by_name = {m.name: m for m in MUTANTS}
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:28s} {m.kind:8s} {m.what}  [{', '.join(m.tests)}]")
        return 0
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        ap.error(f"unknown mutant(s) {unknown}; see --list")
    chosen = [by_name[n] for n in args.names] if args.names else MUTANTS
    with tempfile.TemporaryDirectory(prefix="torchjem-mutants-") as tmp_dir:
        tmp = Path(tmp_dir)
        # every pattern must be found before anything runs (fail fast when the code has moved)
        try:
            for m in chosen:
                plant(fresh_copy(tmp, args.src), m)
        except PatternError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        files = sorted({t for m in chosen for t in m.tests})
        code, failed, tail = run_tests(fresh_copy(tmp, args.src), files)
        if code != 0:
            print(f"the unmutated copy fails {files}: {failed}\n{tail}", file=sys.stderr)
            return 2
        print(f"baseline: the unmutated copy passes {', '.join(files)}\n")
        rows = []
        for m in chosen:
            src = fresh_copy(tmp, args.src)
            where = plant(src, m)
            code, failed, tail = run_tests(src, m.tests)
            by_catcher = [f for f in failed if re.search(m.catcher, f)]
            if code == 0:
                verdict = "MISSED"
            elif not by_catcher:
                verdict = "caught, not by its test" if failed else "ERROR (no test failed)"
            else:
                verdict = "caught"
            rows.append((m, where, verdict, by_catcher, failed))
            print(f"{m.name}: {verdict} ({len(failed)} failing)", flush=True)
    print()
    w = max(len(m.name) for m in chosen)
    print(f"{'mutant':{w}s}  {'kind':8s}  {'planted at':34s}  {'result':8s}  caught by (of its tests: failing / ids)")
    for m, where, verdict, by_catcher, failed in rows:
        names = sorted({f.split("::", 1)[-1].split("[", 1)[0] for f in by_catcher}) or ["-"]
        counts = f"{len(by_catcher)}/{len(failed)}"
        print(f"{m.name:{w}s}  {m.kind:8s}  {where:34s}  {verdict:8s}  {counts} {', '.join(names)}")
    missed = [m.name for m, _, verdict, _, _ in rows if verdict != "caught"]
    tail = f"; not: {missed}" if missed else ""
    print(f"\n{len(rows) - len(missed)}/{len(rows)} caught by the test written for them{tail}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
