"""The ``letters`` OOD set: natural non-digits rendered from matplotlib's fonts, placed like MNIST's
digits (issue 22). Every check of placement is computed here with numpy, not by the renderer."""

import numpy as np
import pytest
import torch

from torchjem.data.glyphs import DEFAULT_CHARS, EXCLUDED_CHARS, FONTS, glyph_fonts, glyph_images
from torchjem.workflows.eval import EvalOptions
from torchjem.workflows.inputs import build_ood_sets, check_ood_specs, describe_named_set, named_ood_set


@pytest.fixture(scope="module")
def letters():
    return glyph_images(300, seed=0)


def ink_of(x: torch.Tensor) -> np.ndarray:
    """(n, 1, H, W) in [-1, 1] -> (n, H, W) ink in [0, 1]."""
    return (x[:, 0].double().numpy() + 1) / 2


def centres_of_mass(ink: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[: ink.shape[1], : ink.shape[2]]
    total = ink.sum((1, 2))
    return (ink * rows).sum((1, 2)) / total, (ink * cols).sum((1, 2)) / total


def larger_sides(ink: np.ndarray) -> np.ndarray:
    sides = []
    for im in ink > 0:  # every inked pixel, the anti-aliased edge included (MNIST's 20 px box holds it)
        r, c = np.nonzero(im.any(1))[0], np.nonzero(im.any(0))[0]
        sides.append(max(r[-1] - r[0] + 1, c[-1] - c[0] + 1))
    return np.array(sides)


def test_shape_dtype_and_range_are_mnist_like(letters):
    assert letters.shape == (300, 1, 28, 28) and letters.dtype == torch.float32
    assert float(letters.min()) == -1.0 and float(letters.max()) == 1.0
    assert torch.equal(letters.amax((1, 2, 3)), torch.ones(300))  # every image has full ink somewhere
    background = (letters == -1).double().mean((1, 2, 3))
    # MNIST: ~81% of the pixels are exactly 0; glyphs are thin shapes on black
    assert 0.5 < float(background.min()) and float(background.mean()) > 0.65 and float(background.max()) < 0.97
    # the frame's edge stays black (the 20 px box leaves 4 px; a centre of mass off the box's centre uses some)
    edge = torch.cat([letters[:, 0, 0], letters[:, 0, -1], letters[:, 0, :, 0], letters[:, 0, :, -1]], 1)
    assert torch.equal(edge, torch.full_like(edge, -1.0))


def test_ink_is_centred_by_its_centre_of_mass(letters):
    rows, cols = centres_of_mass(ink_of(letters))
    assert np.abs(rows - 13.5).max() < 1.0 and np.abs(cols - 13.5).max() < 1.0


def test_the_ink_fills_a_20_px_box_on_its_larger_side(letters):
    sides = larger_sides(ink_of(letters))
    assert sides.min() >= 16 and sides.max() <= 22
    assert 17 <= np.median(sides) <= 20


def test_a_seed_gives_the_same_images_and_another_seed_others():
    state = torch.get_rng_state()
    a, b = glyph_images(50, seed=3), glyph_images(50, seed=3)
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is left alone
    c = glyph_images(50, seed=4)
    assert (a != c).flatten(1).any(1).float().mean() > 0.9
    # no state between calls: a call in between changes nothing, and a prefix is the same images
    glyph_images(7, seed=11, size=12)
    assert torch.equal(glyph_images(50, seed=3), a)
    assert torch.equal(glyph_images(20, seed=3), a[:20])


def test_images_differ_from_one_another(letters):
    flat = letters.flatten(1)
    assert len(torch.unique(flat, dim=0)) == len(flat)


def upright(ch: str, font: str = "DejaVuSans") -> np.ndarray:
    """One glyph, no variation, in the one font ``font``."""
    return ink_of(glyph_images(1, chars=ch, vary=False, fonts=[font]))[0]


def test_an_L_has_its_ink_on_the_left_and_bottom():
    ink = upright("L")
    r, c = np.nonzero(ink > 0)
    top, bottom, left, right = r.min(), r.max(), c.min(), c.max()
    h, w = bottom - top + 1, right - left + 1
    assert h == pytest.approx(20, abs=1) and w < h  # taller than wide: the height fills the 20 px box
    left_band = ink[top : bottom + 1, left : left + w // 3].sum()
    bottom_band = ink[bottom - h // 4 : bottom + 1, left : right + 1].sum()
    upper_right = ink[top : top + h // 2, left + w // 2 : right + 1].sum()
    assert left_band > 5 * upper_right and bottom_band > 5 * upper_right
    assert ink[top : bottom - h // 4, left : left + w // 3].mean() > 0.4  # the stem is solid all the way down


def test_a_T_has_its_ink_on_the_top_and_down_the_middle():
    ink = upright("T", "DejaVuSerif")
    r, c = np.nonzero(ink > 0.5)
    top, bottom, left, right = r.min(), r.max(), c.min(), c.max()
    h, w = bottom - top + 1, right - left + 1
    top_band = ink[top : top + h // 5, left : right + 1]
    assert top_band.mean() > 0.5  # the bar spans the width
    mid = (left + right) // 2
    assert ink[top + h // 5 : bottom - 2, mid - 1 : mid + 2].mean() > 0.6  # the stem, down the middle
    lower_sides = ink[top + h // 3 : bottom - 2, left : left + w // 4].sum() + ink[
        top + h // 3 : bottom - 2, right - w // 4 + 1 : right + 1
    ].sum()
    assert lower_sides < 0.1 * ink.sum()  # nothing under the bar's ends


def test_an_L_and_a_T_are_different_shapes():
    assert np.abs(upright("L") - upright("T")).sum() > 40


def test_no_digit_look_alike_is_a_default_character():
    for ch in "OoDQIilJjZzBSsbGgqTt0123456789":
        assert ch in EXCLUDED_CHARS or ch.isdigit()
    assert not set(DEFAULT_CHARS) & (set(EXCLUDED_CHARS) | set("0123456789"))
    assert not any(ch.isspace() for ch in DEFAULT_CHARS) and len(set(DEFAULT_CHARS)) == len(DEFAULT_CHARS)
    assert {"A", "a", "Σ", "#"} <= set(DEFAULT_CHARS)


def test_every_default_character_appears_in_several_fonts_and_styles():
    fonts = glyph_fonts()
    assert len(fonts) >= 10 and {"DejaVuSans", "DejaVuSerif-Bold", "STIXGeneralItalic", "cmr10"} <= set(fonts)
    x = glyph_images(2000, seed=1)  # 46 characters: each drawn about 40 times, in different shapes
    assert len(torch.unique(x.flatten(1), dim=0)) == 2000
    assert len(FONTS) == 18


def test_other_sizes_and_three_channels():
    x = glyph_images(40, size=8, seed=2)
    assert x.shape == (40, 1, 8, 8) and float(x.min()) == -1.0 and float(x.max()) == 1.0
    rows, cols = centres_of_mass(ink_of(x))
    assert np.abs(rows - 3.5).max() < 0.5 and np.abs(cols - 3.5).max() < 0.5
    y = glyph_images(40, size=(32, 40), seed=2, channels=3)
    assert y.shape == (40, 3, 32, 40) and torch.equal(y[:, 0], y[:, 2])
    rows, cols = centres_of_mass(ink_of(y))
    assert np.abs(rows - 15.5).max() < 1.0 and np.abs(cols - 19.5).max() < 1.0
    side = larger_sides(ink_of(y))
    assert 16 * 32 / 28 <= np.median(side) <= 21 * 32 / 28  # the 20 px box scaled with min(H, W)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": -1}, "n must be an int >= 0"),
        ({"n": 4, "size": 6}, r"size must be .* >= 8"),
        ({"n": 4, "size": (28, 28, 1)}, "size must be"),
        ({"n": 4, "channels": 2}, "channels must be 1 or 3"),
        ({"n": 4, "chars": ""}, "chars must be a non-empty string"),
        ({"n": 4, "chars": "A\u4e00"}, "no font .* draws '\u4e00'"),
        ({"n": 4, "fonts": ["Arial"]}, "unknown font 'Arial'; available: DejaVuSans, "),
    ],
)
def test_bad_arguments_give_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        glyph_images(**kwargs)


def test_letters_is_a_named_ood_set_built_at_mnist_and_digits_sizes():
    assert check_ood_specs(["uniform", "letters"]) == ["uniform", "letters"]
    assert EvalOptions(ood=["letters"]).check().ood == ["letters"]
    x_in = torch.rand(60, 1, 28, 28) * 2 - 1
    sets, desc = build_ood_sets(["uniform", "letters"], x_in, seed=5)
    assert sets["letters"].shape == (60, 1, 28, 28)
    assert torch.equal(sets["letters"], glyph_images(60, seed=6))  # the second set: seed + 1, as the synthetic ones
    assert desc["letters"].startswith("60 glyphs of the 46 characters") and "seed 6" in desc["letters"]
    assert "DejaVu/STIX/Computer Modern" in desc["letters"] and "MNIST-style" in desc["letters"]
    assert desc["letters"] == describe_named_set("letters", 60, 6)

    limited, _ = build_ood_sets(["letters"], x_in, seed=5, limit=25)
    assert limited["letters"].shape == (25, 1, 28, 28)
    small, _ = build_ood_sets(["letters"], torch.rand(30, 1, 8, 8) * 2 - 1, seed=0)  # the digits demo's size
    assert small["letters"].shape == (30, 1, 8, 8) and float(small["letters"].max()) == 1.0
    rgb = named_ood_set("letters", (3, 32, 32), 10, seed=1)
    assert rgb.shape == (10, 3, 32, 32) and torch.equal(rgb[:, :1], glyph_images(10, size=32, seed=1))


def test_letters_refuses_inputs_it_cannot_draw():
    with pytest.raises(ValueError, match=r"OOD set 'letters' is images of at least 8x8 pixels.*\(1, 4, 4\)"):
        build_ood_sets(["letters"], torch.rand(5, 1, 4, 4))
    with pytest.raises(ValueError, match=r"OOD set 'letters' is images.*\(1, 40\)"):
        build_ood_sets(["letters"], torch.rand(5, 1, 40))  # a 1-D signal (mnist1d)
    with pytest.raises(ValueError, match="OOD set 'letters'.*cannot be fed"):
        named_ood_set("letters", (2, 28, 28), 5)
    with pytest.raises(ValueError, match="unknown OOD set 'letter'"):
        check_ood_specs(["letter"])
