import pytest

from torchjem import ConfigError, load_config
from torchjem.cli import main
from torchjem.config import config_reference, from_dict


def test_defaults_are_the_paper_recipe():
    cfg = load_config()
    assert (cfg.sgld.steps, cfg.sgld.step_size, cfg.sgld.noise) == (20, 1.0, 0.01)
    assert (cfg.buffer.size, cfg.buffer.reinit_freq) == (10000, 0.05)
    assert (cfg.optim.lr, cfg.optim.warmup_iters, cfg.optim.decay_epochs) == (1e-4, 1000, [160, 180])


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\nnet:\n  kwargs: {width: 16}\n")
    cfg = load_config(path, ["train.batch_size=8", "net.kwargs.activation=relu", "optim.decay_epochs=[3,5]"])
    assert cfg.train.epochs == 7 and cfg.train.batch_size == 8
    assert cfg.net.kwargs == {"width": 16, "activation": "relu"}
    assert cfg.optim.decay_epochs == [3, 5]
    assert from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.epochs=0", "train.epochs"),
        ("buffer.reinit_freq=1.5", "buffer.reinit_freq"),
        ("sgld.step_size=-1", "sgld.step_size"),
        ("optim.name=adamw", "optim.name"),
        ("train.batch_size=abc", "train.batch_size expects int"),
        ("sgld.clamp=maybe", "expects true or false"),
        ("device=tpu", "device"),
    ],
)
def test_bad_values_are_rejected_with_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_options_suggest_the_right_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config option 'train\.epoch'; did you mean train\.epochs"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="unknown config option 'trian'"):
        load_config(None, ["trian.epochs=3"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_cli_rejects_bad_option_before_work(tmp_path, capsys):
    assert main(["train", "train.epochs=-2", f"--out={tmp_path / 'r'}"]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_reference_lists_every_option():
    ref = config_reference()
    for key in ("labels_per_class", "reinit_freq", "energy_l2", "grad_clamp", "max_retries", "clf_only"):
        assert key in ref
