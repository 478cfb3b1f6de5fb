"""The sections of report.html, one function each, in page order: ``header``, ``summary``,
``classification``, ``calibration``, ``ood``, ``side_studies`` (other runs' classification and OOD
results, e.g. the demo's held-out classes), ``generation``, ``robustness``, ``robustness_audit``,
``dynamics``, ``training_cost`` (in cost.py).

Each takes the ``Page`` (its document is report.json's content) and the typed ``EvaluationReport``:
the report says what there is to show (which models, OOD sets, scores, curves), and every figure
is printed from report.json by its path (``Page.cell``), so the page and the file cannot disagree.
A section with nothing to show adds nothing. A new section is a function here, added to SECTIONS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .cost import training_cost
from .page import MISSING, Page, esc
from .schema import EvaluationReport, ModelReport

OOD_METRICS = {"auroc": "AUROC", "aupr_in": "AUPR-in", "aupr_out": "AUPR-out", "fpr95": "FPR95"}
Row = tuple[str, list[Any]]  # (row name, path inside a model's entry of report.json)
# Figures that do not measure what their name says for a plain classifier (no p(x) or p(x|y) was
# trained): its class-conditional chains climb one logit into adversarial patterns, which the
# feature network still labels as that class. report.json keeps the number; the page says so.
CLASSIFIER_NA = {("generation", "conditional_accuracy")}
NOT_APPLICABLE = '<td class=na title="not applicable to a plain classifier: see the Generation section">n/a*</td>'


# -- helpers ------------------------------------------------------------------------------------
def _label(report: EvaluationReport, role: str) -> str:
    m = report.models[role]
    return f"{esc(m.label or role)} <small>({esc(m.kind or '')})</small>"


def _not_applicable(report: EvaluationReport, role: str, sub: Sequence[Any]) -> bool:
    m = report.models.get(role)
    return m is not None and m.kind == "classifier" and tuple(sub[:2]) in CLASSIFIER_NA


def _roles(report: EvaluationReport, has: Callable[[ModelReport], Any]) -> list[str]:
    """The roles whose model has what ``has`` looks for."""
    return [r for r, m in report.models.items() if has(m)]


def _figures(page: Page, report: EvaluationReport, rows: Sequence[Row], roles: Sequence[str] | None = None,
             extra: Sequence[list[str]] = ()) -> None:
    """A table of figures, one column per model; a row no model has is left out; ``extra``: rows
    of cells built by the caller, at the end."""
    roles = list(roles or report.models)
    body = [*extra]
    for name, sub in rows:
        if all(page.value(["models", r, *sub]) is None for r in roles):
            continue
        cells = [NOT_APPLICABLE if _not_applicable(report, r, sub) else page.cell(["models", r, *sub]) for r in roles]
        body.insert(len(body) - len(extra), [page.td(name, "l"), *cells])
    page.table([page.th("", "l"), *(page.th(_label(report, r)) for r in roles)], body)


def _images(
    page: Page, report: EvaluationReport, figure: str, alt: str, cls: str = "", roles: Sequence[str] | None = None
) -> None:
    """Each model's PNG of ``figure`` (report.json's "png" entry), side by side."""
    cols = []
    for r in roles or report.models:
        name = page.value(["models", r, "png", figure])
        cols.append((_label(report, r), page.img(name, f"{alt} ({r})", cls)))
    page.columns(cols)


def _stacked(page: Page, report: EvaluationReport, figure: str, alt: str, roles: Sequence[str] | None = None) -> None:
    """Each model's PNG of ``figure`` at the page's full width, one under the other (figures with
    many panels, unreadable side by side)."""
    for r in roles or report.models:
        page.add(f"<p><b>{_label(report, r)}</b></p>" + page.img(page.value(["models", r, "png", figure]),
                                                                f"{alt} ({r})", "wide"))


def _union(report: EvaluationReport, keys: Callable[[ModelReport], list[str]]) -> list[str]:
    out: list[str] = []
    for m in report.models.values():
        out += [k for k in keys(m) if k not in out]
    return out


def _ood_sets(m: ModelReport) -> list[str]:
    return list(m.evaluation.ood.sets) if m.evaluation and m.evaluation.ood else []


def _ood_scores(m: ModelReport, ood_set: str) -> list[str]:
    return [k for k in m.evaluation.ood.sets.get(ood_set, {}) if k != "n"] if _ood_sets(m) else []


def _generation(m: ModelReport) -> bool:
    return m.evaluation is not None and m.evaluation.generation is not None


# -- sections -----------------------------------------------------------------------------------
def header(page: Page, report: EvaluationReport) -> None:
    """When, on which data, with which settings; the run directories."""
    data, settings = report.data, report.settings.to_dict()
    what = "data: not recorded"
    if data is not None:
        what = f"data <code>{esc(data.name)}</code> (inputs {esc(data.shape)}, {esc(data.n_classes)} classes)"
    shown = " · ".join(f"{esc(k)}: <code>{esc(v)}</code>" for k, v in settings.items() if k != "ood_descriptions")
    page.note(f"Created {esc(report.created)} · {what} · {shown}")
    rows = [
        [f"<td class=l>{_label(report, r)}</td>", f"<td class=l><code>{esc(m.run_dir or '')}</code></td>",
         f"<td class=l>{esc(m.checkpoint or '')}</td>"]
        for r, m in report.models.items()
    ]
    page.table([page.th("model", "l"), page.th("run directory", "l"), page.th("checkpoint", "l")], rows)


def summary(page: Page, report: EvaluationReport) -> None:
    """The headline figures: accuracy, NLL, refined accuracy, ECE, px AUROC per OOD set, FID."""
    page.h2("Summary")
    rows: list[Row] = [
        ("test accuracy", ["classification", "accuracy"]),
        ("test NLL", ["classification", "nll"]),
        ("accuracy after SGLD refinement", ["classification_refined", "accuracy"]),
        ("ECE (max softmax)", ["calibration", "ece"]),
    ]
    rows += [(f"OOD AUROC, {s}, px", ["ood", "sets", s, "px", "auroc"]) for s in _union(report, _ood_sets)]
    rows += [("FID", ["generation", "fid"]), ("FID spread (bootstrap std)", ["generation", "fid_std"]),
             ("conditional accuracy", ["generation", "conditional_accuracy"])]
    side_rows = []
    for k, side in report.side.items():  # the side studies' log p(x) AUROCs, their models beside ours
        for s in _union(side.report, _ood_sets):
            cells = [page.cell(["side", k, "models", r, "ood", "sets", s, "px", "auroc"]) for r in report.models]
            side_rows.append([page.td(f"OOD AUROC, {s}, px (side runs: {side.title}, below)", "l"), *cells])
    _figures(page, report, rows, extra=side_rows)
    labels = {m.evaluation.generation.feature_label for m in report.models.values() if _generation(m)}
    if labels:
        page.note(f"FID with features of {esc('; '.join(sorted(labels)))}.")


def _skipped(page: Page, report: EvaluationReport, part: str) -> bool:
    """A note per model whose evaluation skipped ``part`` (its reason, from report.json's
    ``skipped``); True when every evaluated model skipped it."""
    evaluated = [(r, m.evaluation) for r, m in report.models.items() if m.evaluation is not None]
    skipped = [(r, (ev.skipped or {}).get(part)) for r, ev in evaluated]
    for r, why in skipped:
        if why:
            page.note(f"{_label(report, r)}: no {esc(part)}: {esc(why)}.")
    return bool(evaluated) and all(why for _, why in skipped)


def classification(page: Page, report: EvaluationReport) -> None:
    """Accuracy and NLL, before and after SGLD refinement."""
    if not _roles(report, lambda m: m.evaluation is not None):
        return
    page.h2("Classification")
    if _skipped(page, report, "classification"):
        return
    _figures(page, report, [
        ("accuracy", ["classification", "accuracy"]),
        ("NLL", ["classification", "nll"]),
        ("examples", ["classification", "n"]),
        ("refinement steps", ["classification_refined", "refine_steps"]),
        ("accuracy after refinement", ["classification_refined", "accuracy"]),
        ("NLL after refinement", ["classification_refined", "nll"]),
    ])
    page.note(
        "Refinement: the test inputs first take n SGLD steps up log p(x) under the model "
        "(the paper's test-time refinement), then are classified."
    )


def calibration(page: Page, report: EvaluationReport) -> None:
    """ECE, MCE and the reliability diagrams."""
    roles = _roles(report, lambda m: m.evaluation is not None and m.evaluation.calibration is not None)
    if not roles:
        if any(m.evaluation is not None and (m.evaluation.skipped or {}).get("calibration")
               for m in report.models.values()):
            page.h2("Calibration")
            _skipped(page, report, "calibration")
        return
    n_bins = report.models[roles[0]].evaluation.calibration.n_bins
    page.h2("Calibration")
    _figures(page, report, [
        ("ECE", ["calibration", "ece"]),
        ("MCE", ["calibration", "mce"]),
        ("accuracy", ["calibration", "accuracy"]),
        ("mean confidence", ["calibration", "confidence"]),
        ("bins", ["calibration", "n_bins"]),
        ("examples", ["calibration", "n"]),
    ])
    page.note(
        f"Max-softmax confidence in {n_bins} equal-width bins. ECE: the count-weighted mean gap "
        "between accuracy and confidence per bin; MCE: the largest gap. Blue bars: accuracy per bin; "
        "shaded: the gap to the bin's mean confidence; dashed: perfect calibration; below: examples per bin."
    )
    _images(page, report, "reliability", "reliability diagram")


def ood(page: Page, report: EvaluationReport) -> None:
    """Per OOD set, the four metrics of every score, the models side by side; the histograms."""
    roles = _roles(report, _ood_sets)
    if not roles:
        return
    page.h2("Out-of-distribution detection")
    page.note(
        "In-distribution test set = positive class. Scores (higher = more in-distribution): "
        "<b>px</b> log p(x) = logsumexp of the logits; <b>py</b> max softmax; <b>pxgrad</b> "
        "-||d log p(x)/dx||<sub>2</sub>; <b>maxlogit</b> the largest logit. AUROC 0.5 = chance, 1 = perfect; "
        "AUPR-in / AUPR-out: average precision with the in-distribution / OOD set as positives; FPR95: the "
        "fraction of OOD inputs accepted at the threshold that keeps 95% of in-distribution inputs "
        "(lower is better). Set sizes: a set read from a file or folder is scored whole, a named data set on "
        "its test split, the held-out classes on all their test images, a synthetic set with as many inputs "
        "as the in-distribution test set; <code>--limit N</code>, when given (see the settings above), "
        "caps each at N."
    )
    span = f"colspan={len(OOD_METRICS)}"
    for s in _union(report, _ood_sets):
        page.h3(s, report.settings.ood_descriptions.get(s))
        sizes = [(f"OOD inputs scored ({s})", ["ood", "sets", s, "n"]), ("in-distribution inputs", ["ood", "n_in"])]
        _figures(page, report, sizes, roles)
        head = [page.th("score", "l", "rowspan=2"), *(page.th(_label(report, r), span=span) for r in roles)]
        sub = [page.th(name) for _ in roles for name in OOD_METRICS.values()]
        rows = []
        for score in _union(report, lambda m, s=s: _ood_scores(m, s)):
            cells = [page.cell(["models", r, "ood", "sets", s, score, k]) for r in roles for k in OOD_METRICS]
            rows.append([page.td(score, "l"), *cells])
        page.table([head, sub], rows)
    _stacked(page, report, "ood_histograms", "OOD score histograms")


def generation(page: Page, report: EvaluationReport) -> None:
    """Sample quality under the named feature network, conditional accuracy, the sample grids."""
    if not _roles(report, _generation):
        return
    page.h2("Generation")
    g = "generation"
    _figures(page, report, [
        ("feature network", [g, "feature_label"]),
        ("samples from", [g, "source"]),
        ("SGLD steps (unconditional)", [g, "steps_unconditional"]),
        ("SGLD steps (conditional)", [g, "steps_conditional"]),
        ("class-conditional samples", [g, "conditional_protocol"]),
        ("real examples", [g, "n_real"]),
        ("generated examples", [g, "n_fake"]),
        ("FID", [g, "fid"]),
        ("FID spread: std over bootstrap resamples", [g, "fid_std"]),
        ("bootstrap resamples", [g, "fid_resamples"]),
        ("FID of real training images (reference)", [g, "fid_real_reference"]),
        ("KID (mean over subsets)", [g, "kid_mean"]),
        ("KID (std over subsets)", [g, "kid_std"]),
        ("KID of real training images (reference)", [g, "kid_real_reference"]),
        ("Inception-style score (mean)", [g, "is_mean"]),
        ("Inception-style score (std)", [g, "is_std"]),
        ("score of real training images (reference)", [g, "is_real_reference"]),
        ("conditional accuracy", [g, "conditional_accuracy"]),
        ("conditional samples per class", [g, "per_class"]),
        ("sample values outside [-1, 1] (clipped)", [g, "out_of_range"]),
    ])
    page.note(
        "FID, KID and the Inception-style score use the feature network named above, not the "
        "Inception network of the literature (unless named so): compare them only with figures from the same "
        "network. The reference rows give what real training images score against the same real test set "
        "at this sample size: the scale to read the others on. FID spread: the std of the FID over bootstrap "
        "resamples of the real and the generated features; another draw of samples (another seed) moves the "
        "FID by about this much, so differences smaller than about two spreads are noise. KID: the unbiased "
        "squared MMD with the cubic polynomial kernel (x·y/d + 1)<sup>3</sup> of the d-dimensional features, "
        "mean and std over random subsets; 0 for samples from the real distribution (it can be slightly "
        "negative), in the units of the squared features (papers often print it x 1000). Conditional accuracy: "
        "the fraction of class-conditional samples that the feature network (an independent classifier) assigns "
        "to the class they were drawn for."
    )
    page.h3("Unconditional samples")
    _images(page, report, "samples_unconditional", "unconditional samples", "grid")
    page.h3("Class-conditional samples (one row per class)")
    cols = []
    for r in report.models:
        img = page.img(page.value(["models", r, "png", "samples_conditional"]), f"class-conditional samples ({r})",
                       "grid")
        if report.models[r].kind == "classifier":  # n/a*: what these are instead
            cols.append((f"{_label(report, r)}: not applicable", img + (
                "<p class=note>n/a*: a plain classifier was not trained on p(x) or p(x|y). Chains that climb its "
                "logit for a class give adversarial patterns, not samples of that class, and the feature network "
                "still labels many of them as the class. Its conditional accuracy (in report.json) therefore says "
                "nothing about sample quality.</p>")))
        else:
            cols.append((_label(report, r), img))
    page.columns(cols)


class _Within(Page):
    """The page seen from inside a part of its document (a side study's report): cells and values
    take paths relative to ``prefix`` and are tagged with their full path; what is added goes to
    the page; headings are one level down."""

    def __init__(self, page: Page, prefix: Sequence[Any]) -> None:
        super().__init__(page.title, page.out, page.doc)
        self.root, self.parts, self.prefix = page, page.parts, list(prefix)

    def value(self, path: Sequence[Any]) -> Any:
        return self.root.value([*self.prefix, *path])

    def cell(self, path: Sequence[Any], spec: str | None = None, *, missing: str = MISSING) -> str:
        return self.root.cell([*self.prefix, *path], spec, missing=missing)

    def h2(self, text: str) -> None:
        self.add(f"<h3>{esc(text)}</h3>")

    def h3(self, text: str, small: str | None = None) -> None:
        self.add(f"<h4>{esc(text)}" + (f" <small>({esc(small)})</small>" if small else "") + "</h4>")


def side_studies(page: Page, report: EvaluationReport) -> None:
    """Each study of other runs (``report.side``): its title and note, then its classification and
    OOD sections, with its own models' columns."""
    for k, side in report.side.items():
        page.h2(side.title)
        page.note(side.note)
        within = _Within(page, ["side", k])
        for section in (classification, ood):
            section(within, side.report)


def _flatten(d: dict, prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    """(path, number) of every scalar number in a nested dict."""
    out: list[tuple[tuple, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flatten(v, (*prefix, k))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(((*prefix, k), v))
    return out


def robustness(page: Page, report: EvaluationReport) -> None:
    """Per model with an attack record: robust accuracy per setting and eps, distal figures, the plot."""
    roles = _roles(report, lambda m: m.robustness is not None)
    if not roles:
        return
    page.h2("Robustness")
    page.note(
        "Robust accuracy under PGD attacks of growing size eps (from <code>jem attack</code>): "
        "JEM-n classifies after n SGLD refinement steps, the attack differentiating through them."
    )
    cols = []
    for r in roles:
        rob, base = report.models[r].robustness, ["models", r, "robustness"]
        part = Page("", page.out, page.doc)  # the column's own parts, same document
        part.note(f"norm {esc(rob.norm or '?')}, {esc(rob.n if rob.n is not None else '?')} test inputs")
        head = [page.th("setting \\ eps", "l"), *(page.th(f"{e:g}") for e in rob.eps)]
        rows = [[page.td(name, "l"), *(part.cell([*base, "curves", name, i]) for i in range(len(rob.eps)))]
                for name in rob.curves]
        part.table(head, rows)
        flat = _flatten(rob.distal) if isinstance(rob.distal, dict) else []
        if flat:
            rows = [[page.td(" / ".join(map(str, p)), "l"), part.cell([*base, "distal", *p])] for p, _ in flat]
            part.table([page.th("distal adversarials", "l"), page.th("value")], rows)
        part.add(part.img(page.value(["models", r, "png", "robust_accuracy"]), f"robust accuracy ({r})"))
        cols.append((_label(report, r), "\n".join(part.parts)))
    page.columns(cols)


def _audits(m: ModelReport) -> dict[str, Any]:
    return (m.robustness.audit or {}) if m.robustness is not None else {}


def robustness_audit(page: Page, report: EvaluationReport) -> None:
    """Per model and setting audited (``jem attack --suite``): the verdict, robust accuracy per eps
    from PGD through each attack of the suite to the worst case, the gradient-masking checks, the
    attacks' settings and cost; the plot of PGD against the worst case."""
    roles = _roles(report, _audits)
    if not roles:
        return
    page.h2("Robustness audit")
    page.note(
        "An AutoAttack-style suite after PGD (<code>jem attack --suite</code>; docs/robustness.md): APGD with the "
        "cross-entropy, targeted APGD with the DLR loss (the top wrong classes), and the black-box Square attack, "
        "each on the inputs still robust; per input the worst case over PGD and the suite counts, cumulative over "
        "eps. JEM-n is attacked through its SGLD refinement (EOT and exact gradient or BPDA as for PGD); Square "
        "only queries it. The checks (Carlini et al. 2019; Athalye et al. 2018) test whether the figure could be "
        "gradient masking: a flagged check means the worst case is an upper bound, not a robust accuracy."
    )

    def text(path: list[Any]) -> str:
        return page.cell(path).replace("<td ", "<td class=l ", 1)

    for r in roles:
        for name, a in _audits(report.models[r]).items():
            base = ["models", r, "robustness", "audit", name]
            eps = a.get("eps", [])
            page.h3(f"{report.models[r].label or r}: {name}", f"suite {a.get('suite')}, {a.get('norm')}, "
                    f"{a.get('n')} inputs{', randomised' if a.get('randomised') else ''}")
            page.table([page.th("verdict", "l")], [[text([*base, "verdict"])]])
            head = [page.th("robust accuracy \\ eps", "l"), *(page.th(f"{e:g}") for e in eps)]
            rows = [[page.td("PGD (the figure before the audit)", "l"),
                     *(page.cell([*base, "pgd", i]) for i in range(len(eps)))]]
            for att in a.get("attacks", {}):
                rows.append([page.td(f"after {att}", "l"),
                             *(page.cell([*base, "attacks", att, "accuracy_after", i]) for i in range(len(eps)))])
            rows.append(page.row([page.td("worst case (per input, PGD and the suite)", "l"),
                                  *(page.cell([*base, "worst", i]) for i in range(len(eps)))]))
            page.table(head, rows)
            rows = [page.row([page.td(c["name"], "l"), page.td("pass" if c["passed"] else "FLAG"),
                              text([*base, "checks", j, "note"]), text([*base, "checks", j, "rule"])],
                             "" if c["passed"] else "bad")
                    for j, c in enumerate(a.get("checks", []))]
            if rows:
                page.table([page.th("check", "l"), page.th("result"), page.th("measured", "l"),
                            page.th("passes when", "l")], rows)
            cost = a.get("cost", {})
            rows = [[page.td(k, "l"), *(page.cell([*base, "cost", k, f]) for f in ("forward", "backward", "seconds"))]
                    for k in cost]
            page.table([page.th("attack", "l"), page.th("forward calls"), page.th("backward calls"),
                        page.th("seconds")], rows)
            st = a.get("settings", {})
            page.note("Settings: " + " · ".join(f"{esc(k)} <code>{esc(st[k])}</code>" for k in (
                "steps", "n_targets", "queries", "eot", "tolerance", "zero") if k in st)
                      + ". Calls count inputs through the model (for JEM-n each is n SGLD steps on its chains).")
        page.add(page.img(page.value(["models", r, "png", "robust_audit"]), f"PGD and the suite's worst case ({r})"))


def dynamics(page: Page, report: EvaluationReport) -> None:
    """Per run with a metrics.jsonl: the last step, divergence recoveries, final figures, the curves."""
    roles = _roles(report, lambda m: m.dynamics is not None)
    if not roles:
        return
    page.h2("Training dynamics")
    d = "dynamics"
    _figures(page, report, [
        ("last step", [d, "steps"]),
        ("recoveries (rewinds after a divergence)", [d, "recoveries"]),
        ("gave up", [d, "gave_up"]),
        ("first divergence at step", [d, "first_trouble_step"]),
        ("final loss", [d, "final", "loss"]),
        ("final training accuracy", [d, "final", "acc"]),
        ("final energy of data", [d, "final", "energy_data"]),
        ("final energy of samples", [d, "final", "energy_sample"]),
        ("final energy gap (samples - data)", [d, "final", "energy_gap"]),
        ("final learning rate", [d, "final", "lr"]),
        ("energy gap trend (per 100 steps, last windows)", [d, "gap_trend"]),
        ("chains: sample values outside the data range", [d, "final", "out_of_range"]),
        ("chains: sample norm / data norm", [d, "final", "norm_ratio"]),
        ("chains: class balance of the samples (1 = even)", [d, "final", "class_balance"]),
        ("chains: mean age (continuations since restart)", [d, "final", "buffer_age"]),
    ], roles)
    page.note(
        "From each run's <code>metrics.jsonl</code>, over training steps: the loss, the training "
        "accuracy (window means) and the validation accuracy, the energy -log p(x) (up to a constant) of data "
        "and of SGLD samples and their gap (samples - data; a classifier-only run has no p(x) term and no "
        "energies), the learning rate. The final figures are the last logged window's means. Red dashed "
        "line: a divergence, after which training rewound to the last good state (the shaded span reaches "
        "back to it, the arrow on the top panel points there, #n is the retry) with a smaller learning rate; "
        "faint dashed lines: the records of the steps that were rewound and done again. Black dotted line "
        "with an X: the run gave up after its last allowed recovery. Chain health (window means of each "
        "step's SGLD samples): the fraction of sample values beyond the data range [-1, 1] by more than 0.1, "
        "the ratio of the mean sample norm to the mean data norm (about 1 when healthy), the class balance "
        "(entropy of the classes predicted for the samples over log(classes)) and the chains' mean age "
        "(continuations since a chain was last restarted; it restarts at 0 on resume). The divergence guard "
        "treats samples out of range beyond <code>divergence.max_out_of_range</code> (default 0.5) or a norm "
        "ratio above <code>divergence.max_norm_ratio</code> (default 4) at <code>divergence.health_checks</code> "
        "(default 3) checks in a row as runaway chains: a recovery, or a give-up naming that cause."
    )
    _images(page, report, "dynamics", "training dynamics", roles=roles)


SECTIONS: tuple[Callable[[Page, EvaluationReport], None], ...] = (
    header, summary, classification, calibration, ood, side_studies, generation, robustness, robustness_audit,
    dynamics, training_cost,
)
