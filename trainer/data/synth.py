"""Synthetic birds in the exact CUB layout, so a first run needs no download.

Side-view birds perched on a branch, with the parts CUB captions talk about (crown, nape, throat,
back, wings and wingbars, breast, belly, tail, bill colour/shape/length, eye, eye ring, legs). Each
part is one flat colour from a palette of CUB colour words with well-separated RGB values, so a small
GAN can learn them. A "species" (class) is a fixed combination of part colours and bill; each image
varies pose, size, position, facing, background and slight shading, and (like real birds) the eye and
leg colour may vary within a species. Classes are split ~75/25 into disjoint train/test classes like
CUB. Every image gets ten captions, each naming 2-5 attributes truthfully, in many phrasings.

Output (byte-identical for the same seed and arguments):

    OUT/CUB_200_2011/{images.txt, bounding_boxes.txt, image_class_labels.txt, classes.txt,
                      train_test_split.txt, images/<NNN.Class>/<Class>_<n>_<id>.jpg}
    OUT/text/<key>.txt, OUT/{train,test}/{filenames,class_info}.pickle, OUT/captions.pickle
    OUT/attributes.json   ground truth per image and what each caption names
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from attngan.errors import AttnGANError

# Canonical colour -> RGB, chosen far apart so each word is one clearly distinct flat colour.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "black": (22, 22, 24),
    "white": (242, 242, 238),
    "grey": (132, 134, 138),
    "brown": (122, 72, 34),
    "buff": (226, 196, 140),
    "yellow": (250, 216, 24),
    "orange": (246, 128, 18),
    "red": (212, 24, 32),
    "pink": (246, 142, 188),
    "purple": (112, 38, 150),
    "blue": (32, 72, 214),
    "green": (36, 152, 52),
}
# Words a caption may use for a colour (the first is the plain word; the others keep it truthful).
COLOUR_WORDS: dict[str, list[str]] = {
    "black": ["black", "black", "black", "jet black", "dark black"],
    "white": ["white", "white", "white", "snow white", "bright white"],
    "grey": ["grey", "gray", "grey", "gray", "slate grey", "dark gray"],
    "brown": ["brown", "brown", "brown", "rufous", "chestnut", "dark brown"],
    "buff": ["buff", "buff", "tan", "beige", "cream", "light brown"],
    "yellow": ["yellow", "yellow", "yellow", "bright yellow", "lemon yellow"],
    "orange": ["orange", "orange", "orange", "bright orange", "rusty orange"],
    "red": ["red", "red", "red", "bright red", "crimson", "scarlet"],
    "pink": ["pink", "pink", "pink", "pale pink", "rosy pink"],
    "purple": ["purple", "purple", "purple", "iridescent purple", "violet"],
    "blue": ["blue", "blue", "blue", "iridescent blue", "bright blue", "royal blue"],
    "green": ["green", "green", "green", "olive green", "bright green", "iridescent green"],
}
ALL = list(COLOUR_RGB)
BILL_SHAPES = ["cone", "hooked", "needle", "dagger"]
ATTRIBUTE_VALUES: dict[str, list[str]] = {
    "crown": ALL,
    "nape": ALL,
    "throat": ALL,
    "back": ALL,
    "wing": ALL,
    "wingbar": ["none", "white", "yellow", "black", "buff"],
    "breast": ALL,
    "belly": ALL,
    "tail": ALL,
    "bill_color": ["black", "grey", "orange", "yellow", "pink", "red", "white"],
    "bill_shape": BILL_SHAPES,
    "bill_length": ["short", "long"],
    "eye": ["black", "red", "yellow", "white"],
    "eyering": ["none", "white", "yellow", "black", "orange", "red", "blue", "grey"],
    "leg": ["black", "grey", "pink", "orange", "yellow", "brown"],
}
COLOUR_PARTS = ["crown", "nape", "throat", "back", "wing", "breast", "belly", "tail"]
BILL_KIND_NAMES = {
    "cone": ["Finch", "Grosbeak", "Bunting", "Sparrow", "Cardinal"],
    "hooked": ["Shrike", "Vireo", "Flycatcher", "Kestrel"],
    "needle": ["Warbler", "Hummingbird", "Wren", "Creeper"],
    "dagger": ["Kingfisher", "Tern", "Heron", "Grackle"],
}


# --- species ------------------------------------------------------------------------------------------


@dataclass
class Species:
    class_id: int  # 1-based, as CUB
    name: str  # "Yellow_crowned_Finch"
    attributes: dict[str, str]
    eye_options: list[str]
    leg_options: list[str]

    @property
    def folder(self) -> str:
        return f"{self.class_id:03d}.{self.name}"


def _pick(rng: np.random.Generator, options: Sequence[str], exclude: Sequence[str] = ()) -> str:
    choices = [o for o in options if o not in exclude]
    return choices[int(rng.integers(0, len(choices)))]


def make_species(n_classes: int, rng: np.random.Generator) -> list[Species]:
    """Distinct part-colour combinations with plausible structure (napes match crown or back, ...)."""
    out: list[Species] = []
    seen: set[tuple[str, ...]] = set()
    names: set[str] = set()
    while len(out) < n_classes:
        a: dict[str, str] = {}
        a["back"] = _pick(rng, ALL)
        a["crown"] = _pick(rng, ALL)
        a["breast"] = _pick(rng, ALL)
        a["belly"] = a["breast"] if rng.random() < 0.45 else _pick(rng, ["white", "buff", "yellow", "grey", *ALL])
        a["wing"] = a["back"] if rng.random() < 0.4 else _pick(rng, ALL)
        a["nape"] = a["crown"] if rng.random() < 0.5 else a["back"] if rng.random() < 0.6 else _pick(rng, ALL)
        a["throat"] = a["breast"] if rng.random() < 0.5 else _pick(rng, ["white", "black", "yellow", "buff", *ALL])
        a["tail"] = a["wing"] if rng.random() < 0.5 else _pick(rng, ALL)
        a["wingbar"] = "none" if rng.random() < 0.45 else _pick(rng, ATTRIBUTE_VALUES["wingbar"][1:], [a["wing"]])
        a["bill_shape"] = _pick(rng, BILL_SHAPES)
        a["bill_length"] = "short" if rng.random() < 0.55 else "long"
        a["bill_color"] = _pick(rng, ATTRIBUTE_VALUES["bill_color"], [a["throat"], a["crown"]])
        a["eyering"] = ("none" if rng.random() < 0.2 else
                        _pick(rng, ATTRIBUTE_VALUES["eyering"][1:], [a["crown"], a["throat"]]))
        signature = tuple(a[k] for k in ("crown", "back", "wing", "breast", "belly", "bill_shape"))
        if signature in seen:
            continue
        seen.add(signature)
        eye0 = "black" if rng.random() < 0.7 else _pick(rng, ATTRIBUTE_VALUES["eye"][1:])
        eye_options = [eye0] if rng.random() < 0.7 else [eye0, _pick(rng, ATTRIBUTE_VALUES["eye"], [eye0])]
        leg0 = _pick(rng, ATTRIBUTE_VALUES["leg"])
        leg_options = [leg0] if rng.random() < 0.6 else [leg0, _pick(rng, ATTRIBUTE_VALUES["leg"], [leg0])]
        kind = _pick(rng, BILL_KIND_NAMES[a["bill_shape"]])
        name = f"{a['crown'].title()}_crowned_{kind}"
        if name in names:
            name = f"{a['breast'].title()}_breasted_{name}"
        base, k = name, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.add(name)
        out.append(Species(len(out) + 1, name, a, eye_options, leg_options))
    return out


# --- drawing ------------------------------------------------------------------------------------------


def _arc(cx: float, cy: float, a: float, b: float, t0: float, t1: float, n: int) -> list[tuple[float, float]]:
    ts = np.radians(np.linspace(t0, t1, n))
    return list(zip((cx + a * np.cos(ts)).tolist(), (cy + b * np.sin(ts)).tolist()))


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: float = 7.0) -> tuple[int, int, int]:
    shift = rng.normal(0, amount)
    return tuple(int(np.clip(c + shift + rng.normal(0, amount / 3), 0, 255)) for c in rgb)  # type: ignore


def _background(size: int, rng: np.random.Generator) -> Image.Image:
    kind = rng.random()
    if kind < 0.5:  # sky
        top = np.array([rng.uniform(95, 165), rng.uniform(150, 200), rng.uniform(215, 250)])
        bottom = np.array([rng.uniform(205, 235), rng.uniform(220, 240), rng.uniform(232, 250)])
    elif kind < 0.85:  # muted foliage
        top = np.array([rng.uniform(70, 110), rng.uniform(95, 130), rng.uniform(65, 95)])
        bottom = np.array([rng.uniform(150, 185), rng.uniform(170, 200), rng.uniform(130, 160)])
    else:  # pale neutral
        top = np.array([rng.uniform(200, 230)] * 3) + rng.uniform(-8, 8, 3)
        bottom = np.array([rng.uniform(170, 200)] * 3) + rng.uniform(-8, 8, 3)
    ramp = np.linspace(0.0, 1.0, size)[:, None]
    column = (top[None, :] * (1 - ramp) + bottom[None, :] * ramp).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(np.repeat(column[:, None, :], size, axis=1), "RGB")
    if 0.5 <= kind < 0.85:  # soft out-of-focus leaves: blobs drawn small, blown up
        small = Image.new("L", (32, 32), 0)
        d = ImageDraw.Draw(small)
        for _ in range(int(rng.integers(3, 8))):
            x, y, r = rng.uniform(0, 32), rng.uniform(0, 32), rng.uniform(3, 7)
            d.ellipse([x - r, y - r, x + r, y + r], fill=int(rng.integers(60, 140)))
        mask = small.filter(ImageFilter.GaussianBlur(2.0)).resize((size, size), Image.Resampling.BICUBIC)
        leaf = tuple(int(v) for v in (top * 0.8).clip(0, 255))
        img.paste(Image.new("RGB", (size, size), leaf), (0, 0), mask)  # type: ignore[arg-type]
    return img


class _Frame:
    """Bird-local coordinates (x forward, y up, body semi-axis = 1) -> pixels."""

    def __init__(self, cx: float, cy: float, scale: float, angle_deg: float, facing_left: bool):
        self.cx, self.cy, self.s = cx, cy, scale
        self.c, self.sn = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
        self.m = -1.0 if facing_left else 1.0

    def __call__(self, pts: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        out = []
        for x, y in pts:
            xr, yr = x * self.c - y * self.sn, x * self.sn + y * self.c
            out.append((self.cx + self.s * self.m * xr, self.cy - self.s * yr))
        return out


def _bill(shape: str, length: str, r: float) -> list[tuple[float, float]]:
    """The bill in head-local coordinates: base at x=0 on the head's front, pointing +x."""
    long = length == "long"
    if shape == "cone":
        h, L = 0.34 * r, (0.62 if not long else 1.05) * r
        return [(-0.1 * r, h), (L, 0.0), (-0.1 * r, -h)]
    if shape == "hooked":
        h, L = 0.28 * r, (0.7 if not long else 1.15) * r
        return [(-0.1 * r, h), (0.75 * L, 0.55 * h), (L, 0.05 * h), (0.92 * L, -0.7 * h),
                (0.8 * L, -0.15 * h), (0.4 * L, -0.55 * h), (-0.1 * r, -h)]
    if shape == "needle":
        h, L = 0.13 * r, (1.0 if not long else 1.75) * r
        return [(-0.1 * r, h), (0.5 * L, 0.35 * h), (L, -0.5 * h), (0.5 * L, -0.9 * h), (-0.1 * r, -h)]
    h, L = 0.22 * r, (0.95 if not long else 1.6) * r  # dagger
    return [(-0.1 * r, h), (L, 0.0), (-0.1 * r, -h)]


RING_RADIUS, EYE_RADIUS = 0.36, 0.2  # in head radii: a black ring round a black eye is one disc 1.8x a bare eye's
THIN_RIM = 0.25  # a ring drawn 0.05 wide, a third of RING_RADIUS's, like generated eyes' rims (render_set's thin_rims)


RING_MAP_EYE = 1  # ring_map's values: 0 elsewhere, 1 the eye, 1 + k a ring of ATTRIBUTE_VALUES["eyering"][k]


def _draw_bird(img: Image.Image, attrs: dict[str, str], rng: np.random.Generator, ring: float = RING_RADIUS,
               ring_map: Image.Image | None = None) -> tuple[float, float, float, float]:
    """Draw a perched bird with `attrs` (`ring`: the eye ring's radius in head radii); returns its bounding box
    (x, y, w, h) in pixels. `ring_map` (an "L" image of the same size): the eye and the ring's visible pixels are
    drawn into it as RING_MAP_EYE and 1 + the ring colour's index (trainer.ring_map learns to read them)."""
    size = img.size[0]
    d = ImageDraw.Draw(img)
    col = {part: _jitter(COLOUR_RGB[attrs[part]], rng) for part in COLOUR_PARTS}
    for part in ("bill_color", "eye", "leg"):
        col[part] = _jitter(COLOUR_RGB[attrs[part]], rng, 4.0)
    facing_left = bool(rng.random() < 0.5)
    scale = size * rng.uniform(0.17, 0.21)  # body semi-axis: the bird spans ~70-85% of the frame
    angle = rng.uniform(-12, 22)  # body tilt, head up
    head_r = 0.52
    hx, hy = 0.98 + rng.uniform(-0.06, 0.06), 0.5 + rng.uniform(-0.08, 0.1)
    tail_angle = rng.uniform(-25, 10)
    bill_dir = rng.uniform(-12, 8)
    cx = size * 0.5 + (scale * 0.3 if facing_left else -scale * 0.3) + rng.uniform(-0.05, 0.05) * size
    cy = size * rng.uniform(0.44, 0.52)
    f = _Frame(cx, cy, scale, angle, facing_left)

    # geometry in bird-local units
    body = _arc(0, 0, 1.0, 0.62, 0, 360, 44)
    ta = math.radians(180 + tail_angle)
    tdx, tdy = math.cos(ta), math.sin(ta)
    nx, ny = -tdy, tdx
    tail_len = rng.uniform(0.95, 1.2)
    base = (-0.7, 0.05)
    tail = [(base[0] + nx * 0.2, base[1] + ny * 0.2), (base[0] - nx * 0.2, base[1] - ny * 0.2),
            (base[0] + tdx * tail_len - nx * 0.3, base[1] + tdy * tail_len - ny * 0.3),
            (base[0] + tdx * tail_len * 0.93, base[1] + tdy * tail_len * 0.93),
            (base[0] + tdx * tail_len + nx * 0.3, base[1] + tdy * tail_len + ny * 0.3)]
    pc = (-0.1, 0.04)
    breast = [pc, *_arc(0, 0, 1.0, 0.62, 18, -72, 14)]
    belly = [pc, *_arc(0, 0, 1.0, 0.62, -72, -172, 14)]
    # wing: a teardrop, rounded at the shoulder, pointed at the rear
    wc, wa, wb, wr = (-0.3, 0.14), 0.86, 0.33, math.radians(-8 + rng.uniform(-4, 4))

    def wing_pt(x: float, y: float) -> tuple[float, float]:
        return (wc[0] + x * math.cos(wr) - y * math.sin(wr), wc[1] + x * math.sin(wr) + y * math.cos(wr))

    ts = np.radians(np.linspace(0, 360, 36))
    wing = [wing_pt(wa * math.cos(t), wb * math.sin(t) * (0.35 + 0.65 * (1 + math.cos(t)) / 2) ** 0.5)
            for t in ts]
    bars = []
    if attrs["wingbar"] != "none":
        for xb in (-0.05, -0.32):
            t = math.acos(xb / wa)
            yb = wb * math.sin(t) * (0.35 + 0.65 * (1 + math.cos(t)) / 2) ** 0.5 * 0.92
            bars.append([wing_pt(xb - 0.055, yb), wing_pt(xb + 0.055, yb), wing_pt(xb + 0.055, -yb),
                         wing_pt(xb - 0.055, -yb)])
    head = _arc(hx, hy, head_r, head_r, 0, 360, 36)
    crown = _arc(hx, hy, head_r, head_r, -4, 184, 20)
    nape = [*_arc(hx, hy, head_r, head_r, 110, 215, 8), *_arc(0, 0, 1.0, 0.62, 38, 78, 6)]
    ex, ey = hx + 0.2 * head_r, hy + 0.02 * head_r
    ring_r, eye_r = ring * head_r, EYE_RADIUS * head_r
    ba = math.radians(bill_dir)
    bx, by = hx + head_r * math.cos(ba) * 0.96, hy + head_r * math.sin(ba) * 0.96
    bill = [(bx + x * math.cos(ba) - y * math.sin(ba), by + x * math.sin(ba) + y * math.cos(ba))
            for x, y in _bill(attrs["bill_shape"], attrs["bill_length"], head_r)]

    # legs hang straight down to a branch, whatever the body tilt
    tops = f([(0.08, -0.5), (-0.22, -0.5)])
    leg_len = scale * rng.uniform(0.45, 0.6)
    foot_y = max(y for _, y in tops) + leg_len
    branch_w = max(3, int(scale * 0.16))
    slope = rng.uniform(-0.08, 0.08) * size
    branch_col = _jitter((72, 52, 34), rng, 6)
    d.line([(0, foot_y + branch_w / 2 - slope), (size, foot_y + branch_w / 2 + slope)], fill=branch_col,
           width=branch_w)
    leg_w = max(2, int(scale * 0.07))
    for (x, y) in tops:
        ground = foot_y - slope + 2 * slope * x / size
        d.line([(x, y), (x, ground)], fill=col["leg"], width=leg_w)
        toe = scale * 0.22 * (-1 if facing_left else 1)
        d.line([(x - toe * 0.5, ground), (x + toe, ground)], fill=col["leg"], width=leg_w)

    d.polygon(f(tail), fill=col["tail"])
    d.polygon(f(body), fill=col["back"])
    d.polygon(f(breast), fill=col["breast"])
    d.polygon(f(belly), fill=col["belly"])
    d.polygon(f(nape), fill=col["nape"])
    d.polygon(f(wing), fill=col["wing"])
    for bar in bars:
        d.polygon(f(bar), fill=_jitter(COLOUR_RGB[attrs["wingbar"]], rng, 4.0))
    d.polygon(f(head), fill=col["throat"])
    d.polygon(f(crown), fill=col["crown"])
    d.polygon(f(bill), fill=col["bill_color"])
    ring_outline, eye_outline = f(_arc(ex, ey, ring_r, ring_r, 0, 360, 20)), f(_arc(ex, ey, eye_r, eye_r, 0, 360, 14))
    if attrs["eyering"] != "none":
        d.polygon(ring_outline, fill=_jitter(COLOUR_RGB[attrs["eyering"]], rng, 4.0))
    d.polygon(eye_outline, fill=col["eye"])
    if ring_map is not None:
        marks = ImageDraw.Draw(ring_map)
        if attrs["eyering"] != "none":
            marks.polygon(ring_outline, fill=RING_MAP_EYE + ATTRIBUTE_VALUES["eyering"].index(attrs["eyering"]))
        marks.polygon(eye_outline, fill=RING_MAP_EYE)
    if attrs["eye"] != "black":
        d.polygon(f(_arc(ex, ey, eye_r * 0.45, eye_r * 0.45, 0, 360, 8)), fill=COLOUR_RGB["black"])

    pts = f(body + tail + wing + head + bill + nape)
    xs = [p[0] for p in pts] + [p[0] for p in tops]
    ys = [p[1] for p in pts] + [foot_y]
    x0, y0 = max(0.0, min(xs)), max(0.0, min(ys))
    x1, y1 = min(float(size - 1), max(xs)), min(float(size - 1), max(ys))
    return (round(x0), round(y0), round(x1 - x0), round(y1 - y0))


def render_bird(attributes: dict[str, str], size: int = 256, rng: np.random.Generator | None = None,
                ) -> Image.Image:
    """One bird with the given part values (keys of ATTRIBUTE_VALUES) on a random background."""
    img, _ = _render(attributes, size, rng if rng is not None else np.random.default_rng())
    return img


def _render(attributes: dict[str, str], size: int, rng: np.random.Generator, ring: float = RING_RADIUS,
            ring_map: Image.Image | None = None) -> tuple[Image.Image, tuple[float, float, float, float]]:
    for part, values in ATTRIBUTE_VALUES.items():
        if attributes.get(part) not in values:
            raise AttnGANError(f"bird attribute {part} must be one of {values}, got {attributes.get(part)!r}")
    img = _background(size, rng)
    bbox = _draw_bird(img, attributes, rng, ring, ring_map)
    return img, bbox


# --- captions -----------------------------------------------------------------------------------------

PART_NOUNS: dict[str, list[tuple[str, bool]]] = {  # (noun, plural)
    "crown": [("crown", False), ("crown", False), ("head", False), ("cap", False)],
    "nape": [("nape", False), ("nape", False), ("neck", False)],
    "throat": [("throat", False), ("throat", False), ("chin", False)],
    "back": [("back", False), ("back", False), ("mantle", False)],
    "wing": [("wings", True), ("wings", True), ("wing", False), ("wing feathers", True), ("secondaries", True)],
    "wingbar": [("wingbars", True), ("wing bars", True), ("wingbar", False), ("stripes on its wings", True)],
    "breast": [("breast", False), ("breast", False), ("chest", False)],
    "belly": [("belly", False), ("belly", False), ("abdomen", False), ("stomach", False)],
    "tail": [("tail", False), ("tail", False), ("tail feathers", True), ("retrices", True)],
    "eye": [("eyes", True), ("eye", False)],
    "eyering": [("eyering", False), ("eye ring", False), ("eye-ring", False), ("ring around its eye", False)],
    "leg": [("legs", True), ("feet", True), ("tarsus", False), ("legs and feet", True)],
    "underparts": [("underparts", True), ("underbelly", False), ("breast and belly", False)],
    "upperparts": [("upperparts", True), ("back and wings", True)],
}
BILL_NOUNS = ["beak", "beak", "bill", "bill"]
BILL_SHAPE_WORDS = {
    "cone": ["cone-shaped", "conical", "thick", "cone shaped"],
    "hooked": ["hooked", "curved", "hooked", "sharply curved"],
    "needle": ["needle-like", "thin", "pointy thin", "needle like"],
    "dagger": ["dagger-like", "pointed", "sharp", "straight pointed"],
}
BILL_LENGTH_WORDS = {"short": ["short", "short", "small", "stubby"], "long": ["long", "long", "elongated"]}
MENTION_WEIGHTS = {"crown": 3.0, "wing": 3.0, "breast": 3.0, "bill": 3.0, "belly": 2.5, "eyering": 2.0,
                   "back": 2.0, "wingbar": 2.0, "body": 2.0, "throat": 1.5, "tail": 1.5, "underparts": 1.5,
                   "upperparts": 1.0, "nape": 1.0, "eye": 1.0, "leg": 1.0}
COVERS = {"underparts": ("breast", "belly"), "upperparts": ("back", "wing"), "bill": ("bill",)}


@dataclass
class _Mention:
    text: str  # "yellow crown" (no article)
    plural: bool
    named: dict[str, str]
    part_noun: str  # for clause forms: "its crown is yellow"
    colour_text: str

    def with_article(self) -> str:
        if self.plural:
            return self.text
        return ("an " if self.text[0] in "aeiou" else "a ") + self.text


def _choice(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(0, len(options)))]


def _body_colour(a: dict[str, str]) -> tuple[str, list[str]] | None:
    """A colour covering most of the bird ("a red bird"): at least 3 of the 4 big regions."""
    regions = ("back", "wing", "breast", "belly")
    for colour in {a[r] for r in regions}:
        parts = [r for r in regions if a[r] == colour]
        if len(parts) >= 3:
            return colour, parts
    return None


def _mention(kind: str, a: dict[str, str], rng: np.random.Generator) -> _Mention:
    if kind == "bill":
        named = {}
        mods = []
        use = [f for f in ("bill_length", "bill_color", "bill_shape") if rng.random() < 0.6]
        if not use:
            use = [_choice(rng, ["bill_length", "bill_color", "bill_shape"])]
        if "bill_length" in use:
            mods.append(_choice(rng, BILL_LENGTH_WORDS[a["bill_length"]]))
            named["bill_length"] = a["bill_length"]
        if "bill_color" in use:
            mods.append(_choice(rng, COLOUR_WORDS[a["bill_color"]]))
            named["bill_color"] = a["bill_color"]
        if "bill_shape" in use:
            mods.append(_choice(rng, BILL_SHAPE_WORDS[a["bill_shape"]]))
            named["bill_shape"] = a["bill_shape"]
        noun = _choice(rng, BILL_NOUNS)
        return _Mention(" ".join([*mods, noun]), False, named, noun, " ".join(mods))
    if kind in ("underparts", "upperparts"):
        parts = COVERS[kind]
        colour = a[parts[0]]
        noun, plural = _choice(rng, PART_NOUNS[kind])
    else:
        parts = (kind,)
        colour = a[kind]
        noun, plural = _choice(rng, PART_NOUNS[kind])
    word = _choice(rng, COLOUR_WORDS[colour])
    return _Mention(f"{word} {noun}", plural, {p: colour for p in parts}, noun, word)


def _join(items: list[str], rng: np.random.Generator) -> str:
    if len(items) == 1:
        return items[0]
    sep = ", and " if len(items) > 2 and rng.random() < 0.4 else " and "
    return ", ".join(items[:-1]) + sep + items[-1]


def _available(a: dict[str, str]) -> list[str]:
    kinds = ["crown", "nape", "throat", "back", "wing", "breast", "belly", "tail", "bill", "eye", "leg"]
    if a["wingbar"] != "none":
        kinds.append("wingbar")
    if a["eyering"] != "none":
        kinds.append("eyering")
    if a["breast"] == a["belly"]:
        kinds.append("underparts")
    if a["back"] == a["wing"]:
        kinds.append("upperparts")
    if _body_colour(a) is not None:
        kinds.append("body")
    return kinds


def _covered(kind: str, a: dict[str, str]) -> set[str]:
    if kind == "body":
        body = _body_colour(a)
        return set(body[1]) if body else set()
    return set(COVERS.get(kind, (kind,)))


def make_caption(a: dict[str, str], rng: np.random.Generator, usage: dict[str, int]) -> dict[str, Any]:
    """One CUB-style caption naming 2-5 attributes of `a`, all true. Returns {"text", "named"}."""
    kinds = _available(a)
    n = int(rng.integers(2, 6))
    chosen: list[str] = []
    covered: set[str] = set()
    weights = np.array([MENTION_WEIGHTS[k] * 0.55 ** usage.get(k, 0) for k in kinds])
    while len(chosen) < n:
        options = [i for i, k in enumerate(kinds) if k not in chosen and not (_covered(k, a) & covered)]
        if not options:
            break
        w = weights[options] / weights[options].sum()
        k = kinds[options[int(rng.choice(len(options), p=w))]]
        chosen.append(k)
        covered |= _covered(k, a)
    for k in chosen:
        usage[k] = usage.get(k, 0) + 1
    named: dict[str, str] = {}
    body_word = None
    if "body" in chosen:
        colour, parts = _body_colour(a)  # type: ignore[misc]
        body_word = _choice(rng, COLOUR_WORDS[colour])
        named.update({p: colour for p in parts})
        chosen.remove("body")
    mentions = [_mention(k, a, rng) for k in chosen]
    for m in mentions:
        named.update(m.named)
    text = _sentence(mentions, body_word, rng)
    if rng.random() < 0.35:
        text += "."
    return {"text": text, "named": dict(sorted(named.items()))}


def _sentence(ms: list[_Mention], body: str | None, rng: np.random.Generator) -> str:
    small = _choice(rng, ["small", "small", "little", "tiny", "medium sized", ""])
    bird = f"{small} bird".strip()
    if body is not None:
        if not ms:
            return _choice(rng, [f"this is a {body} bird", f"a {bird} that is mostly {body}",
                                 f"this bird is {body} all over", f"this {bird} is almost entirely {body}"])
        lst = _join([m.with_article() for m in ms], rng)
        return _choice(rng, [f"this is a {body} bird with {lst}", f"a {body} bird with {lst}",
                             f"this bird is mostly {body} with {lst}", f"this {body} {bird} has {lst}",
                             f"a mostly {body} {bird} with {lst}"])
    lst = _join([m.with_article() for m in ms], rng)
    form = int(rng.integers(0, 9))
    if form == 0:
        return f"this bird has {lst}"
    if form == 1:
        return f"a {bird} with {lst}"
    if form == 2:
        return f"this {bird} has {lst}"
    if form == 3:
        return lst
    if form == 4:
        return f"the bird has {lst}"
    if form == 5:
        return f"this is a {bird} with {lst}"
    last = ms[-1]
    verb = "are" if last.plural else "is"
    rest = _join([m.with_article() for m in ms[:-1]], rng)
    if form == 6:
        return f"this bird has {rest}, and its {last.part_noun} {verb} {last.colour_text}"
    if form == 7:
        return f"the {last.part_noun} of this bird {verb} {last.colour_text} and it has {rest}"
    noun = last.part_noun if last.plural else ("an " if last.part_noun[0] in "aeiou" else "a ") + last.part_noun
    return f"a {bird} with {rest} and {noun} that {verb} {last.colour_text}"


# --- the data set ---------------------------------------------------------------------------------------


def default_classes(n_images: int) -> int:
    return max(2, min(200, n_images, round(n_images / 25)))


def synthesize(out_dir: str | Path, n_images: int, seed: int, size: int = 256, n_classes: int | None = None,
               progress: bool = False) -> Path:
    """Write `n_images` synthetic birds in the CUB layout under `out_dir` (deterministic for a seed)."""
    from tqdm import tqdm

    from trainer.data.cub import ensure_pickles
    from trainer.data.records import write_pickle

    if n_images < 2:
        raise AttnGANError(f"--images must be at least 2 (one train and one test class), got {n_images}")
    if not 32 <= size <= 1024:
        raise AttnGANError(f"--size must be between 32 and 1024, got {size}")
    n_classes = n_classes or default_classes(n_images)
    if not 2 <= n_classes <= min(n_images, 999):
        raise AttnGANError(f"--classes must be between 2 and {min(n_images, 999)}, got {n_classes}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise AttnGANError(f"output directory {out} is not empty; choose a new one")
    species = make_species(n_classes, np.random.default_rng([seed, 0]))
    n_test = max(1, round(n_classes * 0.25))
    test_classes = {s.class_id for s in species[n_classes - n_test:]}
    counts = [n_images // n_classes + (1 if c < n_images % n_classes else 0) for c in range(n_classes)]

    cub = out / "CUB_200_2011"
    (cub / "images").mkdir(parents=True)
    (out / "text").mkdir()
    images_txt, boxes_txt, labels_txt, split_txt = [], [], [], []
    keys: dict[str, list[str]] = {"train": [], "test": []}
    class_info: dict[str, list[int]] = {"train": [], "test": []}
    records: dict[str, Any] = {}
    image_id = 0
    start = time.perf_counter()
    bar = tqdm(total=n_images, desc="synthetic birds", unit="img", disable=not progress)
    for sp, count in zip(species, counts):
        (cub / "images" / sp.folder).mkdir()
        (out / "text" / sp.folder).mkdir()
        for j in range(count):
            image_id += 1
            rng = np.random.default_rng([seed, 1, image_id])
            attrs = dict(sp.attributes)
            attrs["eye"] = _choice(rng, sp.eye_options)
            attrs["leg"] = _choice(rng, sp.leg_options)
            img, bbox = _render(attrs, size, rng)
            key = f"{sp.folder}/{sp.name}_{j + 1:04d}_{1000 + image_id}"
            img.save(cub / "images" / f"{key}.jpg", format="JPEG", quality=92, subsampling=0, optimize=False)
            usage: dict[str, int] = {}
            captions = [make_caption(attrs, rng, usage) for _ in range(10)]
            (out / "text" / f"{key}.txt").write_text("".join(c["text"] + "\n" for c in captions), encoding="utf-8")
            split = "test" if sp.class_id in test_classes else "train"
            keys[split].append(key)
            class_info[split].append(sp.class_id)
            images_txt.append(f"{image_id} {key}.jpg")
            boxes_txt.append(f"{image_id} {float(bbox[0])} {float(bbox[1])} {float(bbox[2])} {float(bbox[3])}")
            labels_txt.append(f"{image_id} {sp.class_id}")
            split_txt.append(f"{image_id} {0 if split == 'test' else 1}")
            records[key] = {"class_id": sp.class_id, "split": split, "bbox": list(bbox),
                            "attributes": dict(sorted(attrs.items())), "captions": captions}
            bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - start

    def lines(path: Path, rows: list[str]) -> None:
        path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")

    lines(cub / "images.txt", images_txt)
    lines(cub / "bounding_boxes.txt", boxes_txt)
    lines(cub / "image_class_labels.txt", labels_txt)
    lines(cub / "train_test_split.txt", split_txt)
    lines(cub / "classes.txt", [f"{s.class_id} {s.folder}" for s in species])
    for split in ("train", "test"):
        write_pickle(out / split / "filenames.pickle", keys[split])
        write_pickle(out / split / "class_info.pickle", class_info[split])
    ensure_pickles(out, 10)  # captions.pickle, exactly as the loader would build it
    meta = {
        "format": "attngan-synthetic-birds", "version": 1, "seed": seed, "size": size,
        "n_images": n_images, "n_classes": n_classes,
        "colours": {k: list(v) for k, v in COLOUR_RGB.items()},
        "attribute_values": ATTRIBUTE_VALUES,
        "classes": {s.folder: {"class_id": s.class_id, "split": "test" if s.class_id in test_classes else "train",
                               "attributes": dict(sorted(s.attributes.items()))} for s in species},
        "images": records,
    }
    (out / "attributes.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    if progress:
        print(f"wrote {n_images} birds ({n_classes} classes, {len(keys['train'])} train / {len(keys['test'])} "
              f"test images) to {out} in {elapsed:.1f} s ({n_images / max(elapsed, 1e-9):.0f} images/s)")
    return out


def load_attributes(data_dir: str | Path) -> dict[str, dict]:
    """{image key: {"class_id", "split", "bbox", "attributes": {part: value}, "captions": [{"text", "named"}]}}."""
    path = Path(data_dir) / "attributes.json"
    if not path.is_file():
        raise AttnGANError(f"missing {path}: only synthetic data sets (attngan data synth) have attributes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data["images"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise AttnGANError(f"{path} is not a synthetic-birds attributes file: {exc}") from None


def named_by_words(record: dict[str, Any]) -> dict[tuple[str, ...], dict[str, str]]:
    """One image's record of `load_attributes` -> {caption's tokens: {part: value} it names}: how a caption read
    back from the data set (as tokens) is matched to what it names."""
    from attngan.text import tokenize

    return {tuple(tokenize(c["text"])): dict(c.get("named", {})) for c in record.get("captions", [])}


SWAPPABLE_PARTS = tuple(p for p in PART_NOUNS  # parts a caption names by a colour alone (swap_named_colour)
                        if p in ATTRIBUTE_VALUES and set(ATTRIBUTE_VALUES[p]) - {"none"} <= set(COLOUR_WORDS))


@functools.cache
def _swap_tables(part: str) -> tuple[dict[str, str], list[tuple[str, ...]], list[tuple[str, ...]]]:
    """swap_named_colour's lookups, made once per part (it runs on every caption of every GAN step): {single word:
    the colour it names} from the colour phrases' last words ("jet black" -> black via "black"), the part's nouns as
    tokens (longest first), and the other parts' nouns."""
    from attngan.text import tokenize

    colour_of = {phrase.split()[-1]: colour for colour, phrases in COLOUR_WORDS.items() for phrase in phrases}
    nouns = sorted({tuple(tokenize(noun)) for noun, _ in PART_NOUNS[part]}, key=len, reverse=True)
    others = [tuple(tokenize(noun)) for other, forms in PART_NOUNS.items() if other != part for noun, _ in forms]
    return colour_of, nouns, others


def swap_named_colour(tokens: list[str], part: str, rng: np.random.Generator) -> list[str] | None:
    """A caption's tokens with the colour it names for `part` swapped for another of the part's colours ("a black
    eye ring" -> "a grey eye ring", "its eyering is slate grey" -> "its eyering is slate red"); None when the caption
    does not name the part's colour. The mismatched caption the head D learns to refuse (TRAIN.HEAD_D_SWAP_PART)."""
    colour_of, nouns, longer = _swap_tables(part)
    for start in range(len(tokens)):
        noun = next((n for n in nouns if tuple(tokens[start:start + len(n)]) == n), None)
        if noun is None or any(len(o) > len(noun) and tuple(tokens[start:start + len(o)]) == o for o in longer):
            continue  # not the part ("eye" of "eye ring")
        at = start - 1 if start and tokens[start - 1] in colour_of else None  # "a black eye ring"
        end = start + len(noun)
        for between in (["of", "this", "bird"], ["that"]):  # "the eyes of this bird are red", "... that is red"
            if tokens[end:end + len(between)] == between:
                end += len(between)
        if at is None and tokens[end:end + 1] in (["is"], ["are"]):  # "its eye ring is slate grey"
            at = next((i for i in range(end + 1, min(end + 4, len(tokens))) if tokens[i] in colour_of), None)
        if at is None:
            continue
        named = colour_of[tokens[at]]
        others = [c for c in ATTRIBUTE_VALUES[part] if c not in ("none", named) and c in COLOUR_WORDS]
        return [*tokens[:at], COLOUR_WORDS[others[int(rng.integers(len(others)))]][0], *tokens[at + 1:]]
    return None


def preview_grid(data_dir: str | Path, out_path: str | Path, n: int = 12, columns: int = 4,
                 cell: int = 256) -> Path:
    """A picture of the first `n` images of a CUB-layout data set, each with its first caption beneath."""
    from PIL import ImageFont

    data_dir = Path(data_dir)
    images_txt = data_dir / "CUB_200_2011" / "images.txt"
    if not images_txt.is_file():
        raise AttnGANError(f"missing data file: {images_txt}")
    rows = [line.split()[1] for line in images_txt.read_text(encoding="utf-8").splitlines() if line.strip()]
    step = max(1, len(rows) // n)
    picks = rows[::step][:n]
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", max(10, cell // 19))
    except OSError:
        font = ImageFont.load_default()
    text_h = int(cell * 0.42)
    ncols = min(columns, len(picks))
    nrows = math.ceil(len(picks) / ncols)
    grid = Image.new("RGB", (ncols * cell, nrows * (cell + text_h)), (255, 255, 255))
    d = ImageDraw.Draw(grid)
    for i, name in enumerate(picks):
        key = name.rsplit(".", 1)[0]
        with Image.open(data_dir / "CUB_200_2011" / "images" / name) as im:
            im = im.convert("RGB").resize((cell, cell), Image.Resampling.BILINEAR)
        x, y = (i % ncols) * cell, (i // ncols) * (cell + text_h)
        grid.paste(im, (x, y))
        caps = (data_dir / "text" / f"{key}.txt").read_text(encoding="utf-8").splitlines()
        words, lines_, line = (caps[0] if caps else "").split(), [], ""
        for w in words:
            trial = f"{line} {w}".strip()
            if d.textlength(trial, font=font) > cell - 8 and line:
                lines_.append(line)
                line = w
            else:
                line = trial
        lines_.append(line)
        line_h = getattr(font, "size", 11) + 3
        for k, text in enumerate(lines_[:5]):
            d.text((x + 4, y + cell + 3 + k * line_h), text, fill=(20, 20, 20), font=font)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out_path, optimize=True)
    return out_path
