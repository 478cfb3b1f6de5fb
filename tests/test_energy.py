import pytest
import torch
from torch import nn

from torchjem import JEM
from torchjem.nets import create_net


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.SiLU(), nn.Linear(32, 5))


def test_energy_identities():
    jem = JEM(_net())
    x = torch.randn(7, 1, 4, 4)
    y = torch.randint(0, 5, (7,))
    logits = jem.logits(x)
    assert torch.allclose(jem.log_px(x), logits.logsumexp(1))
    assert torch.allclose(jem.energy(x), -logits.logsumexp(1))
    assert torch.allclose(jem.log_pxy(x, y), logits[torch.arange(7), y])
    assert torch.allclose(jem.energy(x, y), -logits[torch.arange(7), y])
    # log p(y|x) = log p(x, y) - log p(x), and it normalises over classes
    assert torch.allclose(jem.log_py_given_x(x, y), jem.log_pxy(x, y) - jem.log_px(x), atol=1e-6)
    assert torch.allclose(jem.log_py_given_x(x).exp().sum(1), torch.ones(7), atol=1e-6)
    assert torch.equal(jem(x), logits)


def test_energy_head_variant_uses_its_own_scalar():
    backbone = create_net("convnet", n_classes=0, width=4)
    jem = JEM(backbone, energy_head=True, n_classes=10)  # the feature size from backbone.num_features
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert jem.logits(x).shape == (3, 10)
    assert jem.log_px(x).shape == (3,)
    expected = jem.energy_head(backbone(x)).squeeze(1)
    assert torch.allclose(jem.log_px(x), expected)
    assert not torch.allclose(jem.log_px(x), jem.logits(x).logsumexp(1))


def test_energy_head_needs_sizes():
    try:
        JEM(nn.Linear(3, 3), energy_head=True)
    except ValueError as e:
        assert "n_classes" in str(e)
    else:
        raise AssertionError("expected a ValueError")


def test_prediction_restores_each_module_mode():
    from torchjem.evaluate.classification import predict_logits

    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.Linear(8, 3)).eval()
    net[2].train()
    a = predict_logits(net, torch.randn(4, 1, 4, 4))
    assert a.shape == (4, 3)
    assert [m.training for m in net.modules()] == [False, False, False, True, False]


def test_classification_result_counts_hits_and_keeps_the_report_schema():
    import numpy as np

    from torchjem.evaluate.classification import classification
    from torchjem.evaluate.results import ClassificationResult

    net = _net()
    x, y = torch.randn(50, 1, 4, 4, generator=torch.Generator().manual_seed(2)), torch.arange(50) % 5
    res = classification(net, x, y, batch_size=16)
    assert isinstance(res, ClassificationResult)
    with torch.no_grad():
        logits = net(x).double().numpy()
    labels = y.numpy()
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert res.accuracy == pytest.approx(np.mean(logits.argmax(1) == labels))
    assert res.nll == pytest.approx(-log_probs[np.arange(50), labels].mean(), rel=1e-5)
    assert res.to_dict() == {"accuracy": res.accuracy, "nll": res.nll, "n": 50, "refine_steps": 0}
    assert list(res.to_dict()) == ["accuracy", "nll", "n", "refine_steps"]


def test_residual_energy_head_adds_the_classifier_logsumexp_and_leaves_the_class_head_to_cross_entropy():
    from torchjem.config import ConfigError, load_config

    class Backbone(nn.Module):
        num_features = 5

        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 5)

        def forward(self, x):
            return torch.tanh(self.lin(x))

    torch.manual_seed(0)
    jem = JEM(Backbone(), energy_head=True, n_classes=4, residual=True)
    x = torch.randn(6, 3, requires_grad=True)
    logits, lpx = jem.joint(x)
    # by hand: h = tanh(W x + b); log p(x) = logsumexp(C h + c) + (e . h + e0)
    h = torch.tanh(x @ jem.net.lin.weight.T + jem.net.lin.bias)
    by_hand = (h @ jem.class_head.weight.T + jem.class_head.bias).logsumexp(1) + (h @ jem.energy_head.weight.T).squeeze(
        1) + jem.energy_head.bias
    assert torch.allclose(lpx, by_hand, atol=1e-6)
    assert torch.allclose(logits, h @ jem.class_head.weight.T + jem.class_head.bias, atol=1e-6)
    # the input gradient (SGLD's) goes through both parts; the class head gets none from log p(x)
    (g_x,) = torch.autograd.grad(lpx.sum(), x, retain_graph=True)
    (g_hand,) = torch.autograd.grad(by_hand.sum(), x)
    assert torch.allclose(g_x, g_hand, atol=1e-6)
    lpx.sum().backward()
    assert jem.class_head.weight.grad is None and jem.energy_head.weight.grad is not None
    assert jem.net.lin.weight.grad is not None and jem.net.lin.weight.grad.abs().sum() > 0
    with pytest.raises(Exception, match="energy_head"):
        JEM(Backbone(), residual=True)
    with pytest.raises(ConfigError, match="net.residual_energy"):
        load_config(None, ["net.residual_energy=true"])
