import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.functional.classification import multiclass_calibration_error

from torchjem.errors import InputError
from torchjem.evaluate.calibration import calibration, calibration_from_probs


def synthetic(n: int, n_classes: int, confidence: torch.Tensor, accuracy: torch.Tensor, seed: int = 0):
    """Probabilities whose max is ``confidence`` and whose argmax is right with probability ``accuracy``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    right = torch.rand(n, generator=g) < accuracy
    wrong = (y + torch.randint(1, n_classes, (n,), generator=g)) % n_classes
    pred = torch.where(right, y, wrong)
    probs = ((1 - confidence) / (n_classes - 1))[:, None].expand(n, n_classes).clone()
    probs[torch.arange(n), pred] = confidence
    return probs, y


def test_calibrated_predictor_has_ece_near_zero():
    n = 40_000
    conf = 0.2 + 0.79 * torch.rand(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    probs, y = synthetic(n, 10, conf, conf)
    res = calibration_from_probs(probs, y, n_bins=20)
    assert res.ece < 0.015
    assert res.n == n and res.n_bins == 20


def test_overconfident_predictor_has_large_ece():
    n = 5000
    conf = torch.full((n,), 0.99, dtype=torch.float64)
    probs, y = synthetic(n, 10, conf, torch.full((n,), 0.6))
    res = calibration_from_probs(probs, y)
    assert res.ece == pytest.approx(0.39, abs=0.03)
    assert res.mce >= res.ece
    assert res.accuracy == pytest.approx(0.6, abs=0.03)
    assert res.confidence == pytest.approx(0.99)


def test_bins_reproduce_the_reported_ece_and_mce():
    g = torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(2000, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (2000,), generator=g)
    res = calibration_from_probs(logits.softmax(1), y, n_bins=15)
    b = res.bins
    assert len(b["edges"]) == 16 and sum(b["count"]) == 2000
    gaps = [abs(a - c) for a, c, k in zip(b["accuracy"], b["confidence"], b["count"]) if k]
    weights = [k / 2000 for k in b["count"] if k]
    assert sum(w * g for w, g in zip(weights, gaps)) == pytest.approx(res.ece, abs=1e-6)
    assert max(gaps) == pytest.approx(res.mce, abs=1e-6)


def test_calibration_of_a_model_matches_its_probabilities():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(300, 1, 4, 4) * 2 - 1, torch.randint(0, 3, (300,))
    res = calibration(net, x, y, n_bins=10)
    ref = calibration_from_probs(net(x).double().softmax(1), y, n_bins=10)
    assert res.ece == pytest.approx(ref.ece, abs=1e-6)
    assert net.training  # mode restored


@pytest.mark.parametrize(
    "probs, y, bins, match",
    [
        (torch.rand(4, 3), torch.zeros(4, dtype=torch.long), 0, "n_bins"),
        (torch.rand(0, 3), torch.zeros(0, dtype=torch.long), 10, "non-empty"),
        (torch.rand(4, 3), torch.zeros(5, dtype=torch.long), 10, "labels"),
        (torch.rand(4, 3), torch.full((4,), 3), 10, r"\[0, 2\]"),
    ],
)
def test_bad_input_gives_a_clear_error(probs, y, bins, match):
    with pytest.raises(ValueError, match=match):
        calibration_from_probs(probs, y, n_bins=bins)


def test_calibration_result_matches_numpy_binning_and_keeps_the_report_schema():
    g = torch.Generator().manual_seed(7)
    probs = (2 * torch.randn(3000, 4, generator=g, dtype=torch.float64)).softmax(1)
    y = torch.randint(0, 4, (3000,), generator=g)
    res = calibration_from_probs(probs, y, n_bins=10)
    # ECE by hand: bins [lo, hi) over the max probability, weighted |accuracy - confidence| gaps.
    p, labels = probs.numpy(), y.numpy()
    conf, correct = p.max(1), (p.argmax(1) == labels).astype(float)
    idx = upper_bin(conf, 10)
    gaps = [(idx == b).sum() / 3000 * abs(correct[idx == b].mean() - conf[idx == b].mean()) for b in np.unique(idx)]
    assert res.ece == pytest.approx(sum(gaps), abs=1e-6)  # torchmetrics sums in float32
    assert res.accuracy == pytest.approx(correct.mean()) and res.confidence == pytest.approx(conf.mean())
    assert res.bins["count"] == np.bincount(idx, minlength=10).tolist()
    d = res.to_dict()
    assert list(d) == ["ece", "mce", "n_bins", "n", "accuracy", "confidence", "bins"]
    assert list(d["bins"]) == ["edges", "confidence", "accuracy", "count"]
    assert d["ece"] == res.ece and d["n_bins"] == 10 and d["n"] == 3000


def upper_bin(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """The stated bin-edge rule (torchmetrics'): bin b is [edge_b, edge_b+1), a confidence exactly
    on an edge goes to the upper bin, exactly 1 to the top bin; edge b is b / n_bins."""
    edges = np.arange(n_bins + 1) / n_bins
    return np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)


def numpy_ece(conf: np.ndarray, correct: np.ndarray, idx: np.ndarray) -> float:
    n = len(conf)
    return sum((idx == b).sum() / n * abs(correct[idx == b].mean() - conf[idx == b].mean()) for b in np.unique(idx))


def test_a_confidence_exactly_on_a_bin_edge_goes_to_the_upper_bin():
    """10 bins; confidences 0.5, 0.6, 0.8, 0.9 exactly on edges, with neighbours on either side and
    mixed right and wrong answers, so that the lower-bin rule would give other counts and another ECE.
    (Not 0.3 or 0.7: torch.linspace's edges there are one ulp above 3/10 and 7/10.)"""
    conf = np.array([0.45, 0.5, 0.55, 0.6, 0.65, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0])
    right = np.array([0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 1], dtype=float)
    n, c = len(conf), 3
    probs = np.zeros((n, c))
    probs[:, 0] = conf  # class 0 is the prediction; the rest of the mass split over the others
    probs[:, 1] = probs[:, 2] = (1 - conf) / 2
    y = np.where(right == 1, 0, 1)
    res = calibration_from_probs(torch.from_numpy(probs), torch.from_numpy(y), n_bins=10)
    idx = upper_bin(conf, 10)
    assert idx[[1, 3, 6, 8]].tolist() == [5, 6, 8, 9]  # the rule itself: each edge value in the bin it opens
    assert idx[-1] == 9  # 1.0: the top bin
    assert res.bins["count"] == np.bincount(idx, minlength=10).tolist() == [0, 0, 0, 0, 1, 2, 2, 1, 2, 3]
    want = numpy_ece(conf, right, idx)
    assert res.ece == pytest.approx(want, abs=1e-6)
    # torchmetrics itself (the library's ECE) follows the same rule
    tm = multiclass_calibration_error(torch.from_numpy(probs), torch.from_numpy(y), c, n_bins=10, norm="l1")
    assert float(tm) == pytest.approx(want, abs=1e-6)
    for b in np.unique(idx):
        assert res.bins["accuracy"][b] == pytest.approx(right[idx == b].mean())
        assert res.bins["confidence"][b] == pytest.approx(conf[idx == b].mean())
    # the other rule, (lo, hi], would be visibly different: the test can tell them apart
    lower = np.clip(np.ceil(np.round(conf * 10, 9)).astype(int) - 1, 0, 9)
    assert lower[[1, 3, 6, 8]].tolist() == [4, 5, 7, 8]
    assert abs(numpy_ece(conf, right, lower) - want) > 0.01


def _valid_probs(n: int = 6, c: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return torch.randn(n, c, generator=g, dtype=torch.float64).softmax(1), torch.arange(n) % c


@pytest.mark.parametrize(
    "damage, match",
    [
        ("nan", r"probabilities must be finite, found 1 NaN and 0 infinite values \(in 1 of 6 rows\)"),
        ("inf", r"probabilities must be finite, found 0 NaN and 1 infinite values \(in 1 of 6 rows\)"),
        ("negative", r"must lie in \[0, 1\], found values in \[-0\.25, [0-9.]+\] \(in 1 of 6 rows\)"),
        ("above one", r"must lie in \[0, 1\], found values in \[0, 1\.5\] \(in 1 of 6 rows\)"),
        ("logits", r"must lie in \[0, 1\].*not logits"),
        ("rows off", r"must sum to 1 \(within 0\.001\), found row sums in \[0\.5, 1\] \(1 of 6 rows off\)"),
        ("slightly off", r"must sum to 1 \(within 0\.001\), found row sums in \[1, 1\.002\] \(1 of 6 rows off\)"),
    ],
)
def test_invalid_probabilities_are_refused_and_named(damage, match):
    # torchmetrics would silently softmax values outside [0, 1], and NaN scored as a number
    probs, y = _valid_probs()
    if damage == "nan":
        probs[2, 1] = float("nan")
    elif damage == "inf":
        probs[2, 1] = float("inf")
    elif damage == "negative":
        probs[2] = torch.tensor([-0.25, 0.75, 0.5], dtype=torch.float64)  # sums to 1, one value below 0
    elif damage == "above one":
        probs[2] = torch.tensor([1.5, 0.0, 0.0], dtype=torch.float64)
    elif damage == "logits":
        probs = 3 * torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    elif damage == "rows off":
        probs[4] = probs[4] / probs[4].sum() * 0.5
    elif damage == "slightly off":
        probs[4] = probs[4] / probs[4].sum() * 1.002
    with pytest.raises(InputError, match=r"^calibration: .*" + match):
        calibration_from_probs(probs, y)


def test_probabilities_within_the_tolerance_and_float32_softmax_are_accepted():
    probs, y = _valid_probs()
    probs[4] = probs[4] / probs[4].sum() * (1 + 5e-4)  # within 1e-3 of summing to 1
    res = calibration_from_probs(probs, y, n_bins=5)
    assert res.confidence == pytest.approx(float(probs.max(1).values.mean()))
    net_probs = torch.randn(200, 10, generator=torch.Generator().manual_seed(4)).softmax(1)  # float32 rows
    assert calibration_from_probs(net_probs, torch.zeros(200, dtype=torch.long)).n == 200


def test_float_labels_are_refused():
    probs, y = _valid_probs()
    with pytest.raises(InputError, match=r"labels must be integer class indices, got dtype torch\.float32"):
        calibration_from_probs(probs, y.float())
