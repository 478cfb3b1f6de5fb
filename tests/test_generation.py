import logging

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from torchjem.checkpoint import load_checkpoint
from torchjem.data import load_data
from torchjem.energy import JEM
from torchjem.errors import InputError
from torchjem.evaluate.features import ClassifierFeatures, InceptionFeatures, ModuleFeatures, feature_label
from torchjem.evaluate.generation import (
    conditional_accuracy,
    frechet_distance,
    generation,
    inception_style_score,
    kernel_distance,
    sample_quality,
)
from torchjem.sampling import SGLD, ChainSampler, ReplayBuffer
from torchjem.workflows import inputs
from torchjem.workflows.inputs import default_cache_dir, default_feature_net, resolve_feature_net


def gaussian_features(n=2000, d=8, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    f = gaussian_features()
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    small, large = frechet_distance(f, f + 0.5), frechet_distance(f, f + 1.0)
    # A pure mean shift by delta in each of d=8 dimensions has FID = d * delta^2 exactly.
    assert small == pytest.approx(8 * 0.25, rel=1e-6)
    assert large == pytest.approx(8 * 1.0, rel=1e-6)


def test_fid_between_two_samples_of_one_distribution_is_small():
    assert frechet_distance(gaussian_features(seed=1), gaussian_features(seed=2)) < 0.05


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    same, _ = kernel_distance(
        gaussian_features(500, seed=1), gaussian_features(500, seed=2), subsets=20, subset_size=200
    )
    shifted, _ = kernel_distance(gaussian_features(500, seed=1), gaussian_features(500, seed=2) + 1, subsets=20)
    assert abs(same) < 0.01 and shifted > 10 * max(abs(same), 1e-4)


def test_inception_style_score_spans_one_to_the_number_of_classes():
    assert inception_style_score(torch.zeros(100, 10))[0] == pytest.approx(1.0)
    confident = 50.0 * torch.eye(10).repeat(10, 1)  # every class equally often, each with certainty
    assert inception_style_score(confident)[0] == pytest.approx(10.0, rel=1e-3)


def test_conditional_accuracy_counts_samples_of_their_class():
    # A "classifier" that reads the class from the first pixels: x[:, 0, 0, :C] one-hot.
    net = ModuleFeatures(nn.Sequential(nn.Flatten(), nn.Identity()), "reader")
    net.logits = lambda x: x.flatten(1)[:, :4]
    y = torch.arange(4).repeat_interleave(5)
    x = torch.zeros(20, 1, 2, 4)
    x[torch.arange(20), 0, 0, y] = 1.0
    x.view(20, -1)[:1, :4] = torch.tensor([0, 0, 0, 1.0])  # one sample of class 0 looks like a 3
    res = conditional_accuracy(net, x, y)
    assert res.conditional_accuracy == pytest.approx(19 / 20)
    assert res.per_class == pytest.approx([0.8, 1.0, 1.0, 1.0])
    assert res.to_dict() == {"conditional_accuracy": res.conditional_accuracy, "per_class": res.per_class, "n": 20}
    assert list(res.to_dict()) == ["conditional_accuracy", "per_class", "n"]


def small_digits(**kwargs):
    return load_data("digits", limit=400, **kwargs)


@pytest.fixture(scope="module")
def digits():
    return small_digits()


@pytest.fixture(scope="module")
def fnet(digits, tmp_path_factory):
    cache = tmp_path_factory.mktemp("fnet")
    return default_feature_net(digits, cache, epochs=4, shared_cache=cache / "shared"), cache


@pytest.fixture
def trainings(monkeypatch):
    """Counts the feature-net trainings (the real training runs)."""
    calls = []
    train = inputs._train_classifier

    def counted(net, data, *args, **kwargs):
        calls.append(data.name)
        return train(net, data, *args, **kwargs)

    monkeypatch.setattr(inputs, "_train_classifier", counted)
    return calls


def test_default_feature_net_is_trained_once_and_cached(digits, fnet, caplog):
    net, cache = fnet
    assert (cache / "classifier_digits.pt").is_file()
    assert net.test_accuracy > 0.6  # a useful classifier after four short epochs on 400 images
    with caplog.at_level(logging.INFO, logger="torchjem"):
        again = default_feature_net(digits, cache, epochs=4)
    assert "loaded" in caplog.text
    x = digits.x_test[:16]
    assert torch.allclose(again.features(x), net.features(x))
    assert "not Inception" in feature_label(net) and net.name == "classifier[digits]"


def test_runs_on_the_same_data_share_one_feature_net(digits, tmp_path, trainings, caplog):
    shared = tmp_path / "shared"
    first = default_feature_net(digits, tmp_path / "run_a", epochs=2, shared_cache=shared)
    assert trainings == ["digits"] and len(list(shared.glob("classifier_digits_*.pt"))) == 1
    assert (tmp_path / "run_a" / "classifier_digits.pt").is_file()
    # another run on the same data (a fresh copy of it): loaded from the shared cache, not trained
    with caplog.at_level(logging.INFO, logger="torchjem"):
        second = default_feature_net(small_digits(), tmp_path / "run_b", epochs=2, shared_cache=shared)
        third = default_feature_net(small_digits(), None, epochs=2, shared_cache=shared)
    assert trainings == ["digits"] and caplog.text.count("from shared cache") == 2
    assert (tmp_path / "run_b" / "classifier_digits.pt").is_file()  # the run keeps a copy of what it used
    x = digits.x_test[:32]
    assert torch.equal(second.features(x), first.features(x)) and torch.equal(third.logits(x), first.logits(x))
    assert second.test_accuracy == first.test_accuracy and second.history == first.history


def test_other_data_or_settings_get_another_cache_entry(digits, tmp_path, trainings):
    shared = tmp_path / "shared"
    default_feature_net(digits, tmp_path / "run", epochs=2, shared_cache=shared)
    other_split = small_digits(split_seed=1)
    default_feature_net(other_split, tmp_path / "run", epochs=2, shared_cache=shared)  # the run's copy: other data
    default_feature_net(small_digits(classes=[0, 1, 2]), None, epochs=2, shared_cache=shared)
    default_feature_net(digits, None, epochs=3, shared_cache=shared)
    assert trainings == ["digits"] * 4 and len(list(shared.glob("classifier_digits_*.pt"))) == 4
    assert inputs.data_key(other_split) != inputs.data_key(digits) == inputs.data_key(small_digits())
    meta = load_checkpoint(tmp_path / "run" / "classifier_digits.pt")["meta"]
    assert meta["data_key"] == inputs.data_key(other_split)  # the run's copy now follows the run's data


def test_the_shared_cache_defaults_to_torchjem_cache(digits, tmp_path, monkeypatch, trainings):
    monkeypatch.setenv("TORCHJEM_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env" / "feature_nets"
    default_feature_net(digits, None, epochs=2)
    default_feature_net(digits, None, epochs=2)
    assert trainings == ["digits"] and len(list((tmp_path / "env" / "feature_nets").glob("*.pt"))) == 1
    monkeypatch.delenv("TORCHJEM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "torchjem" / "feature_nets"


def test_a_corrupt_cache_file_is_retrained_with_a_warning(digits, tmp_path, trainings, caplog):
    shared, run = tmp_path / "shared", tmp_path / "run"
    net = default_feature_net(digits, run, epochs=2, shared_cache=shared)
    (entry,) = shared.glob("classifier_digits_*.pt")
    (run / "classifier_digits.pt").write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.INFO, logger="torchjem"):
        again = default_feature_net(digits, run, epochs=2, shared_cache=shared)  # the shared copy still serves
    assert trainings == ["digits"] and "run's copy" in caplog.text and "cannot be used" in caplog.text
    assert load_checkpoint(run / "classifier_digits.pt")["meta"]["test_accuracy"] == net.test_accuracy
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    (run / "classifier_digits.pt").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="torchjem"):
        retrained = default_feature_net(digits, run, epochs=2, shared_cache=shared)
    assert trainings == ["digits"] * 2 and "shared cache" in caplog.text and str(entry) in caplog.text
    assert load_checkpoint(entry)["meta"]["data_key"] == inputs.data_key(digits)  # rewritten, readable
    x = digits.x_test[:16]
    assert torch.equal(retrained.features(x), again.features(x))  # seeded: the same network again


def test_feature_net_training_stops_when_validation_accuracy_plateaus(tmp_path, capsys):
    easy = load_data("digits", classes=[0, 1])  # 0 vs 1: validation accuracy saturates in a few epochs
    net = default_feature_net(easy, None, epochs=15, shared_cache=tmp_path, progress=True)
    h = net.history
    assert h["stopped_early"] and h["epochs"] < 15 and h["max_epochs"] == 15
    assert len(h["val_accuracy"]) == h["epochs"] and h["best_epoch"] <= h["epochs"] - 2  # patience: 2 epochs
    assert max(h["val_accuracy"]) == h["val_accuracy"][h["best_epoch"] - 1] > 0.95 and net.test_accuracy > 0.95
    (entry,) = tmp_path.glob("classifier_digits_*.pt")
    assert load_checkpoint(entry)["meta"]["history"] == h
    assert "FID feature net for digits (trained once, cached): epoch 1" in capsys.readouterr().err
    with pytest.raises(InputError, match="feature net: epochs"):
        default_feature_net(easy, None, epochs=0, shared_cache=False)


def test_sample_quality_of_real_data_against_itself(digits, fnet):
    net, _ = fnet
    x = digits.x_test[:120]
    same = sample_quality(x, x, net)
    noise = sample_quality(x, torch.rand_like(x) * 2 - 1, net)
    assert same.fid == pytest.approx(0.0, abs=1e-3)
    assert noise.fid > 10 + same.fid
    assert noise.kid_mean > same.kid_mean
    assert same.feature_net == "classifier[digits]"


def fid_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), with unbiased covariances."""
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(sa @ sb).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * root))


def test_sample_quality_matches_hand_computed_fid_and_score_and_keeps_the_report_schema():
    # Features = the flattened 4-pixel inputs themselves, so FID and the score can be computed by hand.
    net = ModuleFeatures(nn.Flatten(), "pixels")
    g = torch.Generator().manual_seed(5)
    x_real = torch.randn(300, 1, 2, 2, generator=g, dtype=torch.float64)
    x_fake = 0.7 * torch.randn(300, 1, 2, 2, generator=g, dtype=torch.float64) + 0.4
    x_ref = torch.randn(300, 1, 2, 2, generator=g, dtype=torch.float64)
    res = sample_quality(x_real, x_fake, net)
    f_real, f_fake = x_real.flatten(1).numpy(), x_fake.flatten(1).numpy()
    assert res.fid == pytest.approx(fid_by_hand(f_real, f_fake), rel=1e-6)
    p = np.exp(f_fake) / np.exp(f_fake).sum(1, keepdims=True)  # one split for 300 samples
    kl = (p * (np.log(p) - np.log(p.mean(0)))).sum(1)
    assert res.is_mean == pytest.approx(np.exp(kl.mean()), rel=1e-6)
    keys = ["feature_net", "feature_label", "n_real", "n_fake", "fid", "fid_std", "fid_resamples", "kid_mean",
            "kid_std", "is_mean", "is_std"]
    assert list(res.to_dict()) == keys and res.fid_real_reference is None  # no reference: left out
    assert res.to_dict()["n_fake"] == 300 and res.to_dict()["feature_net"] == "pixels"
    # the spread: the std of the hand-computed FID over the same 10 bootstrap resamples (generator seed 0)
    gen, boot = torch.Generator().manual_seed(0), []
    for _ in range(10):
        i, j = torch.randint(300, (300,), generator=gen), torch.randint(300, (300,), generator=gen)
        boot.append(fid_by_hand(f_real[i.numpy()], f_fake[j.numpy()]))
    assert res.fid_resamples == 10 and res.fid_std == pytest.approx(np.std(boot, ddof=1), rel=1e-5)
    with_ref = sample_quality(x_real, x_fake, net, x_reference=x_ref)
    assert list(with_ref.to_dict()) == [*keys, "fid_real_reference", "kid_real_reference", "is_real_reference"]
    assert with_ref.fid_real_reference == pytest.approx(fid_by_hand(f_real, x_ref.flatten(1).numpy()), rel=1e-6)


def test_generation_draws_scores_and_labels_samples(digits, fnet):
    net, _ = fnet
    torch.manual_seed(0)
    jem = JEM(ClassifierFeatures((1, 8, 8), 10, width=4))
    sgld = SGLD(n_steps=2)
    sampler = ChainSampler(sgld, ReplayBuffer(100, (1, 8, 8), 10))
    x_real = digits.x_test[:30]
    res = generation(jem, sampler, x_real, n_classes=10, feature_net=net, per_class=2, x_reference=digits.x_train[:30])
    assert res.source == "replay buffer" and res.steps_unconditional == 0 and res.steps_conditional == 2
    assert res.arrays["unconditional"].shape == (30, 1, 8, 8) and res.arrays["conditional"].shape == (20, 1, 8, 8)
    assert res.arrays["y_conditional"].tolist() == [c for c in range(10) for _ in range(2)]
    assert res.fid > res.fid_real_reference >= 0  # uniform-noise buffer vs real digits
    assert 0 <= res.conditional_accuracy <= 1 and len(res.conditional_accuracy_per_class) == 10
    fresh = generation(jem, sampler.fresh(), x_real, n_classes=10, feature_net=net, n=10, per_class=1)
    assert fresh.source.startswith("fresh") and fresh.steps_unconditional == 2 and fresh.n_fake == 10
    assert res.to_dict()["fid_real_reference"] == res.fid_real_reference and "fid_real_reference" not in fresh.to_dict()


def test_generation_result_scores_its_own_samples_and_keeps_the_report_schema(digits, fnet):
    net, _ = fnet
    torch.manual_seed(1)
    jem = JEM(ClassifierFeatures((1, 8, 8), 10, width=4))
    sampler = ChainSampler(SGLD(n_steps=2), shape=(1, 8, 8))
    res = generation(jem, sampler, digits.x_test[:20], n_classes=10, feature_net=net, n=12, per_class=3)
    x_c, y_c = res.arrays["conditional"], res.arrays["y_conditional"]
    with torch.no_grad():
        pred = net.logits(x_c).argmax(1).numpy()
    hits = pred == y_c.numpy()
    assert res.conditional_accuracy == pytest.approx(hits.mean())
    assert res.conditional_accuracy_per_class == pytest.approx([hits[y_c.numpy() == c].mean() for c in range(10)])
    assert res.arrays["unconditional"].shape == (12, 1, 8, 8) and float(res.arrays["unconditional"].abs().max()) <= 1
    d = res.to_dict()
    assert list(d) == [
        "source", "steps_unconditional", "steps_conditional", "conditional_protocol", "feature_net",
        "feature_label", "n_real", "n_fake",
        "fid", "fid_std", "fid_resamples", "kid_mean", "kid_std", "is_mean", "is_std", "conditional_accuracy",
        "conditional_accuracy_per_class", "per_class", "out_of_range", "arrays",
    ]
    assert d["arrays"]["conditional"] is x_c and d["per_class"] == 3 and d["n_real"] == 20 and d["n_fake"] == 12


def test_inception_features_from_a_local_torchscript_file(tmp_path):
    class FakeInception(nn.Module):
        """Stands in for the StyleGAN2-ADA detector: uint8 RGB in, 2048 features or probabilities out."""

        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            f = x.float().mean(dim=(2, 3)).repeat(1, 683)[:, :2048]
            if return_features:
                return f
            return torch.softmax(f[:, :1008], dim=1)

    path = tmp_path / "inception.pt"
    with pytest.warns(DeprecationWarning):  # TorchScript is deprecated in recent torch; still what the files use
        torch.jit.script(FakeInception()).save(str(path))
    net = resolve_feature_net(f"inception:{path}", None, None)
    assert isinstance(net, InceptionFeatures) and "inception" in net.name
    x = torch.full((3, 1, 8, 8), 1.0)
    f = net.features(x)
    assert f.shape == (3, 2048) and float(f[0, 0]) == 255.0  # [-1, 1] -> uint8 RGB
    assert torch.allclose(net.logits(x).exp().sum(1), torch.ones(3))
    with pytest.raises(FileNotFoundError, match="Inception weights file"):
        resolve_feature_net("inception:/no/such/file.pt", None, None)
    with pytest.raises(ValueError, match="feature net 'resnet'"):
        resolve_feature_net("resnet", None, None)


def test_bad_input_gives_a_clear_error(fnet):
    net, _ = fnet
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="shape"):
        sample_quality(torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 6, 6), net)
    with pytest.raises(ValueError, match="empty"):
        sample_quality(torch.zeros(0, 1, 8, 8), torch.zeros(0, 1, 8, 8), net)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("which", ["real", "generated"])
def test_fid_and_kid_refuse_nan_or_infinite_features(value, which):
    # torchmetrics turns such features into a NaN distance, which FID used to clip to 0.0: a perfect score
    f_real, f_fake = gaussian_features(200, 4, seed=1), gaussian_features(200, 4, seed=2)
    bad = f_real if which == "real" else f_fake
    bad[7, 2] = value
    bad[9, 0] = value
    found = "2 NaN and 0 infinite" if np.isnan(value) else "0 NaN and 2 infinite"
    for metric, fn in (("FID", frechet_distance), ("KID", kernel_distance)):
        with pytest.raises(InputError) as e:
            fn(f_real, f_fake)
        msg = str(e.value)
        assert msg.startswith(f"{metric}: the {which} features: expected finite values"), msg
        assert f"found {found} entries (in 2 of 200 rows)" in msg


def test_fid_refuses_features_whose_covariance_overflows_and_mismatched_dims():
    f_real, f_fake = gaussian_features(50, 3, seed=1), gaussian_features(50, 3, seed=2)
    with pytest.raises(InputError, match=r"FID: the distance is nan for features as large as .*e\+200"):
        frechet_distance(f_real * 1e200, f_fake)
    with pytest.raises(InputError, match=r"same D, got \(50, 3\) and \(50, 2\)"):
        frechet_distance(f_real, f_fake[:, :2])


def test_inception_style_score_and_sample_quality_refuse_nan():
    logits = torch.zeros(10, 3)
    logits[4, 1] = float("nan")
    with pytest.raises(InputError, match=r"Inception-style score: the class logits: .* 1 NaN and 0 infinite"):
        inception_style_score(logits)
    # the FID/KID path of sample_quality: features = the pixels, one generated sample holds a NaN
    net = ModuleFeatures(nn.Flatten(), "pixels")
    x_real = gaussian_features(40, 4, seed=3).reshape(40, 1, 2, 2)
    x_fake = gaussian_features(40, 4, seed=4).reshape(40, 1, 2, 2)
    x_fake[5, 0, 1, 1] = float("nan")
    with pytest.raises(InputError, match=r"features \(samples\) of feature net 'pixels': .* \(in 1 of 40 rows\)"):
        sample_quality(x_real, x_fake, net)
    assert sample_quality(x_real, x_fake.nan_to_num(0.0), net).fid > 0  # finite features still score
