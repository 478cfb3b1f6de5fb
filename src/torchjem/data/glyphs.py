"""Natural non-digit images at MNIST's size: letters and symbols rendered offline from the TrueType
fonts matplotlib ships in its wheel (``matplotlib/mpl-data/fonts/ttf``), placed the way MNIST's
digits are (LeCun et al., "Gradient-based learning applied to document recognition", 1998, and the
MNIST page: each digit size-normalised to fit a 20x20 box, aspect ratio kept, anti-aliased, then
centred by its centre of mass in the 28x28 frame).

Each (character, font) glyph is rendered once per process with ``matplotlib.ft2font.FT2Font`` (in
memory, nothing written to disk); the per-image variations (stroke width, slant, rotation, scale)
are tensor operations (``grid_sample``) drawn from a seeded ``torch.Generator``, so a seed always
gives the same images and the global random state is never touched. 10,000 images at 28x28 take
about 2-3 s on one CPU thread (the glyphs are rendered once, in 1-3 s, on the first call).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..utils import DATA_RANGE

# Characters left out because, size-normalised to a 20x20 box like an MNIST digit, they look like
# one (the digit they pass for in at least one of the fonts): a model that calls them in-distribution
# would not be wrong, so they have no place in a set of non-digits.
EXCLUDED_CHARS: dict[str, str] = {
    "O": "0", "o": "0", "D": "0", "Q": "0", "Θ": "0", "Ο": "0 (omicron)",
    "I": "1", "l": "1", "i": "1", "j": "1", "J": "1", "Ι": "1 (iota)", "|": "1",
    "Z": "2", "z": "2", "Ζ": "2 (zeta)", "?": "2",
    "B": "8 or 3", "Β": "8 (beta)", "&": "8",
    "S": "5", "s": "5", "$": "5", "§": "5",
    "b": "6", "G": "6",
    "T": "7", "t": "7 or 4", "Τ": "7 (tau)",
    "g": "9", "q": "9",
}
LATIN = "ACEFHKLMNPRUVWXYacdefhkmnpruvwxy"  # A-Z and a-z less EXCLUDED_CHARS
GREEK = "ΓΔΛΞΠΣΦΨΩ"  # the Greek capitals that look neither like a Latin letter nor like a digit
SYMBOLS = "#%*+@"
DEFAULT_CHARS = LATIN + GREEK + SYMBOLS

# matplotlib's fonts (file stem, whether its character map is Unicode). The Computer Modern files
# are TeX-encoded: a code point may hold another glyph (cmmi10's '@' is a partial sign), so there a
# character is used only when the glyph's name is the character's.
FONTS: tuple[tuple[str, bool], ...] = (
    ("DejaVuSans", True), ("DejaVuSans-Bold", True), ("DejaVuSans-Oblique", True),
    ("DejaVuSans-BoldOblique", True), ("DejaVuSerif", True), ("DejaVuSerif-Bold", True),
    ("DejaVuSerif-Italic", True), ("DejaVuSansMono", True), ("DejaVuSansMono-Bold", True),
    ("STIXGeneral", True), ("STIXGeneralBol", True), ("STIXGeneralItalic", True), ("STIXGeneralBolIta", True),
    ("cmr10", False), ("cmb10", False), ("cmss10", False), ("cmti10", False), ("cmtt10", False),
)
_GLYPH_NAMES = {"#": "numbersign", "%": "percent", "*": "asterisk", "+": "plus", "@": "at"}

MNIST_FRAME, MNIST_BOX = 28, 20  # LeCun's placement: a 20x20 box in a 28x28 frame
MIN_SIDE = 8  # the smallest frame a glyph is drawn in (the digits data set's 8x8)
_RES = 40  # the rendered glyph's larger side, in pixels, before the per-image variations
_MARGIN = 4  # empty pixels around each rendered glyph: room to thicken its strokes

# per-image variations, uniform in these ranges
ROTATION_DEG = 10.0  # +- degrees
SLANT = 0.2  # +- horizontal shear (x += SLANT * y), as handwriting leans
SCALE = (0.85, 1.0)  # the ink's larger side, as a fraction of the 20 px box
STROKE = (-0.3, 1.0)  # < 0: thinner (up to an erosion by 2 render pixels), > 0: thicker (a dilation)


def font_dir() -> Path:
    """The folder of TrueType fonts inside the installed matplotlib."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _render(font: object, ch: str, px: float) -> np.ndarray:
    font.set_size(px, 72)  # points at 72 dpi: pixels per em
    font.set_text(ch)
    font.draw_glyphs_to_bitmap(antialiased=True)
    img = np.asarray(font.get_image(), dtype=np.float32) / 255.0
    rows, cols = np.nonzero(img > 0)
    if not len(rows):
        return img[:0, :0]
    return img[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


@functools.lru_cache(maxsize=4)
def _atlas(
    chars: str, only: tuple[str, ...] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Every (char, font) glyph of ``chars`` rendered once, its larger side about ``_RES`` pixels,
    as ink in [0, 1] on a (K, 3, 1, S, S) canvas (thinned by an erosion, as drawn, thickened by a
    dilation, each of 2 pixels); ``table`` (n_chars, n_fonts) holds each character's
    glyph indices (padded with -1), ``count`` how many fonts have it; and the fonts used. ``only``:
    the stems of the fonts to use (None: all of :data:`FONTS`)."""
    from matplotlib.ft2font import FT2Font

    root = font_dir()
    chosen = [(stem, uni) for stem, uni in FONTS if only is None or stem in only]
    fonts = [(stem, uni, FT2Font(str(root / f"{stem}.ttf"))) for stem, uni in chosen if (root / f"{stem}.ttf").exists()]
    glyphs: list[np.ndarray] = []
    rows: list[list[int]] = []
    used: set[str] = set()
    for ch in chars:
        row = []
        for stem, unicode_map, font in fonts:
            idx = font.get_char_index(ord(ch))
            if not idx or (not unicode_map and font.get_glyph_name(idx) not in (ch, _GLYPH_NAMES.get(ch))):
                continue
            first = _render(font, ch, 2 * _RES)
            if not first.size:
                continue
            img = _render(font, ch, 2 * _RES * _RES / max(first.shape))  # larger side ~ _RES
            if img.size and img.max() > 0.5:
                row.append(len(glyphs))
                glyphs.append(img)
                used.add(stem)
        if not row:
            raise InputError(f"glyphs: no font of matplotlib's ({', '.join(s for s, _ in chosen)}) draws {ch!r}")
        rows.append(row)
    side = max(max(g.shape) for g in glyphs) + 2 * _MARGIN
    canvas = np.zeros((len(glyphs), 1, side, side), dtype=np.float32)
    for k, g in enumerate(glyphs):
        top, left = (side - g.shape[0]) // 2, (side - g.shape[1]) // 2
        canvas[k, 0, top : top + g.shape[0], left : left + g.shape[1]] = g
    table = torch.full((len(rows), max(map(len, rows))), -1, dtype=torch.long)
    for c, row in enumerate(rows):
        table[c, : len(row)] = torch.tensor(row)
    count = torch.tensor([len(r) for r in rows])
    normal = torch.from_numpy(canvas)
    thin, thick = -F.max_pool2d(-normal, 5, 1, 2), F.max_pool2d(normal, 5, 1, 2)  # erosion, dilation
    return torch.stack([thin, normal, thick], 1), table, count, tuple(s for s, _ in FONTS if s in used)


def _frame(size: int | Sequence[int]) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in hw) or min(hw) < MIN_SIDE:
        raise InputError(
            f"glyphs: size must be an int or (height, width) of ints >= {MIN_SIDE} (letters need at least "
            f"{MIN_SIDE}x{MIN_SIDE} pixels), got {size!r}"
        )
    return hw  # type: ignore[return-value]


def _check_fonts(fonts: Sequence[str] | None) -> tuple[str, ...] | None:
    if fonts is None:
        return None
    known = [stem for stem, _ in FONTS]
    fonts = (fonts,) if isinstance(fonts, str) else tuple(fonts)
    bad = [f for f in fonts if f not in known]
    if bad or not fonts:
        raise InputError(
            f"glyphs: unknown font {', '.join(map(repr, bad)) or '(none given)'}; available: {', '.join(known)}"
        )
    return tuple(sorted(set(fonts)))


def _check_chars(chars: str) -> str:
    if not isinstance(chars, str) or not chars or any(c.isspace() for c in chars):
        raise InputError(f"glyphs: chars must be a non-empty string of printable characters, got {chars!r}")
    return "".join(dict.fromkeys(chars))  # each character once, in order


def glyph_images(
    n: int,
    *,
    size: int | Sequence[int] = MNIST_FRAME,
    seed: int = 0,
    chars: str = DEFAULT_CHARS,
    channels: int = 1,
    vary: bool = True,
    fonts: Sequence[str] | None = None,
) -> torch.Tensor:
    """``n`` images of letters and symbols placed like MNIST's digits, white ink on black.

    Each image is one character drawn uniformly from ``chars``, in a font drawn uniformly from those
    of matplotlib's (DejaVu Sans / Serif / Sans Mono, STIX, Computer Modern, with their bold and
    italic styles; :data:`FONTS`) that have it, with a stroke width, slant (shear), rotation and size
    drawn from :data:`STROKE`, :data:`SLANT`, :data:`ROTATION_DEG` and :data:`SCALE`. It is then placed
    as LeCun et al. placed MNIST's digits: scaled so that the larger side of its ink's bounding box
    (anti-aliased edge included) fills the 20 px box of a 28x28 frame (17-20 px with the size
    variation, rarely up to 22 once rotated), aspect ratio kept, and shifted so that its centre of
    mass (intensity-weighted) is at the frame's centre ((H - 1) / 2, (W - 1) / 2 in pixel indices;
    within 0.2 px). Other frame sizes scale the 20 px box by min(H, W) / 28. Rendered at twice the
    output resolution (more for small frames) and box-filtered down, so edges are anti-aliased; each
    image's darkest pixel is then full ink, as in MNIST.

    Deterministic: the same arguments give the same tensor; the global random state is not used.

    Args:
        n: how many images (>= 0).
        size: the frame, an int (square) or (H, W), each >= 8 (default 28).
        seed: the seed of the per-image choices (default 0).
        chars: the characters to draw from (default :data:`DEFAULT_CHARS`: letters and symbols that do
            not look like digits; :data:`EXCLUDED_CHARS` lists the ones left out and why).
        channels: 1, or 3 for the channel repeated (default 1).
        vary: False draws each glyph upright at the full 20 px box with its own strokes (default True).
        fonts: stems of :data:`FONTS` to draw with, e.g. ``["DejaVuSans"]`` (default None: all).

    Returns:
        float32 (n, channels, H, W) in ``utils.DATA_RANGE`` ([-1, 1]): background -1, ink +1.

    Raises:
        InputError: for a negative ``n``, a bad size, channels other than 1 or 3, empty ``chars``,
            an unknown font or a character none of the fonts draws.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise InputError(f"glyphs: n must be an int >= 0, got {n!r}")
    if channels not in (1, 3):
        raise InputError(f"glyphs: channels must be 1 or 3, got {channels!r}")
    h, w = _frame(size)
    atlas, table, count, _ = _atlas(_check_chars(chars), _check_fonts(fonts))

    # one row of draws per image: the first k images of a seed are the same whatever n is
    u = torch.rand(n, 6, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
    char = (u[:, 0] * len(count)).long().clamp_max(len(count) - 1)
    font = (u[:, 1] * count[char]).long().clamp_max(count[char] - 1)
    idx = table[char, font]
    if vary:
        theta = math.radians(ROTATION_DEG) * (2 * u[:, 2] - 1)
        slant = SLANT * (2 * u[:, 3] - 1)
        scale = SCALE[0] + (SCALE[1] - SCALE[0]) * u[:, 4]
        stroke = STROKE[0] + (STROKE[1] - STROKE[0]) * u[:, 5]
    else:
        zero = torch.zeros(n, dtype=torch.float64)
        theta, slant, scale, stroke = zero, zero, zero + 1, zero

    box = MNIST_BOX * min(h, w) / MNIST_FRAME
    ss = max(1, math.ceil(_RES / box))  # supersampling: the box spans about _RES rendered pixels
    out = [
        _place(atlas[idx[i : i + 512]], theta[i : i + 512], slant[i : i + 512], box * scale[i : i + 512],
               stroke[i : i + 512], (h, w), ss)
        for i in range(0, n, 512)
    ]
    ink = torch.cat(out) if out else torch.zeros(0, 1, h, w)
    ink = ink / ink.amax((1, 2, 3), keepdim=True).clamp_min(1e-6)  # the darkest pixel is full ink, as in MNIST
    lo, hi = DATA_RANGE
    x = (lo + (hi - lo) * ink.clamp(0, 1)).float()
    return x.expand(-1, channels, -1, -1).contiguous() if channels == 3 else x.contiguous()


def _place(
    glyph: torch.Tensor,
    theta: torch.Tensor,
    slant: torch.Tensor,
    box: torch.Tensor,
    stroke: torch.Tensor,
    hw: tuple[int, int],
    ss: int,
) -> torch.Tensor:
    """Rendered glyphs (m, 1, S, S), ink in [0, 1] -> (m, 1, H, W) ink: strokes thickened or
    thinned, slanted, rotated, scaled to ``box`` px on the larger side, centre of mass centred."""
    m, side = len(glyph), glyph.shape[-1]
    t = stroke.float()[:, None, None, None]
    thin, glyph, thick = glyph.unbind(1)
    glyph = torch.where(t >= 0, glyph + t * (thick - glyph), glyph + (-t) * (thin - glyph))

    # the forward linear map (render pixels -> output pixels, before scaling): rotation after a slant
    cos, sin = torch.cos(theta), torch.sin(theta)
    a = torch.stack([torch.stack([cos, cos * slant - sin], -1), torch.stack([sin, sin * slant + cos], -1)], -2)
    # the ink's extent after slant and rotation, on 2x2 blocks of render pixels (half a pixel at 28x28)
    coarse = F.max_pool2d(glyph, 2).flatten(1).unsqueeze(-1) > 0.05
    ys, xs = torch.meshgrid(torch.arange(side // 2) * 2.0 + 0.5, torch.arange(side // 2) * 2.0 + 0.5, indexing="ij")
    proj = torch.einsum("mij,pj->mpi", a.float(), torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
    hi = torch.where(coarse, proj, -1e9).amax(1)
    lo = torch.where(coarse, proj, 1e9).amin(1)
    extent = (hi - lo + 2).amax(1).double()  # the larger side, render pixels
    s = (box - 1) / extent  # output pixels per render pixel; the anti-aliased edge adds about 1 px

    ys, xs = torch.meshgrid(torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64),
                            indexing="ij")
    weight = glyph.reshape(m, -1).double()
    com = torch.stack([(weight * xs.reshape(-1)).sum(1), (weight * ys.reshape(-1)).sum(1)], -1)
    com = com / weight.sum(1, keepdim=True).clamp_min(1e-12)  # (m, 2) as (x, y)
    h, w = hw
    target = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=torch.float64)
    inv = torch.linalg.inv(a) / s[:, None, None]  # output pixels -> render pixels
    oy, ox = torch.meshgrid((torch.arange(h * ss, dtype=torch.float64) + 0.5) / ss - 0.5,
                            (torch.arange(w * ss, dtype=torch.float64) + 0.5) / ss - 0.5, indexing="ij")
    out_pix = torch.stack([ox, oy], -1).reshape(-1, 2)  # (H*W*ss^2, 2), output pixel-index coordinates

    centre = target.expand(m, 2)
    for _ in range(2):  # the second pass corrects the small shift that sampling and the frame's edge make
        src = com.unsqueeze(1) + torch.einsum("mij,mpj->mpi", inv, out_pix.unsqueeze(0) - centre.unsqueeze(1))
        grid = ((2 * src + 1) / side - 1).float().reshape(m, h * ss, w * ss, 2)
        img = F.grid_sample(glyph, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        img = F.avg_pool2d(img, ss) if ss > 1 else img
        centre = centre - (_centre_of_mass(img) - target)
    return img


def _centre_of_mass(img: torch.Tensor) -> torch.Tensor:
    """(m, 1, H, W) non-negative images -> (m, 2) centres of mass as (x, y) pixel indices (the
    frame's centre for an empty image)."""
    m, _, h, w = img.shape
    wgt = img.reshape(m, h, w).double()
    total = wgt.sum((1, 2))
    x = (wgt.sum(1) * torch.arange(w, dtype=torch.float64)).sum(1)
    y = (wgt.sum(2) * torch.arange(h, dtype=torch.float64)).sum(1)
    com = torch.stack([x, y], -1) / total.clamp_min(1e-12).unsqueeze(-1)
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=torch.float64)
    return torch.where(total.unsqueeze(-1) > 0, com, centre)


def glyph_fonts(chars: str = DEFAULT_CHARS) -> tuple[str, ...]:
    """The font files (stems of :data:`FONTS`) that draw at least one of ``chars`` in this matplotlib."""
    return _atlas(_check_chars(chars), None)[3]


def describe_glyphs(n: int, seed: int, chars: str = DEFAULT_CHARS) -> str:
    """One line saying how :func:`glyph_images` made ``n`` images (for reports)."""
    return (
        f"{n} glyphs of the {len(set(chars))} characters {chars} rendered from matplotlib's "
        f"DejaVu/STIX/Computer Modern fonts ({len(glyph_fonts(chars))} fonts and styles), MNIST-style placement "
        f"(larger side 17-20 px of a 20 px box in 28x28, centre of mass centred; scaled with the frame), "
        f"random stroke, slant, rotation and size, seed {seed}"
    )
