"""A generated image world whose complexity is a dial, and whose captions leave something open.

From one flat shape on a plain background (complexity 0) to five overlapping shapes, rings, digit
glyphs, striped and dotted textures on a gradient or checkered background (complexity 1). Every
pattern is a function of the caption and a few free variables, so a small DiT can learn it; nothing
is pixel noise.

The caption fixes what a text prompt would: background kind and colour, then per object its kind,
colour, size, position bin, texture and digit. It does NOT fix each object's exact position (a free
offset of -2..2 px in x and y) or the phase of a checkered background: like a real text-to-image
distribution, one caption has many images, so the flow from noise to image bends (early steps see a
blur of the possibilities, later steps commit). `fit` finds the true render of a caption that lies
closest to a given image by choosing those free variables: the toy world's measure against the
ground truth.

Images are [3, S, S] in [-1, 1]; tokens are [T] ints: background kind and colour, then 7 per object
(kind, colour, size, x, y, texture, digit), padded with PAD. The all-PAD caption is the empty prompt
(classifier-free guidance).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

KINDS = ("circle", "square", "triangle", "ring", "glyph")
COLORS = np.array([[230, 60, 50], [50, 170, 80], [60, 90, 220], [240, 200, 40], [200, 80, 200], [40, 200, 210],
                   [240, 140, 40], [245, 245, 245]], dtype=np.float32) / 127.5 - 1.0
BG_COLORS = np.array([[40, 40, 60], [90, 60, 40], [40, 80, 70], [120, 120, 130]], dtype=np.float32) / 127.5 - 1.0
BACKGROUNDS = ("plain", "gradient", "checker")
TEXTURES = ("flat", "stripes", "dots")
BINS = 4  # size and position buckets
JITTER = 2  # free offset of an object, -JITTER..JITTER px in x and y
CHECKER = 8  # checker cell size in px; its phase is free (multiples of 2 px)
# Vocabulary layout: PAD, background kinds, background colours, kinds, colours, size / x / y bins,
# textures, digits (a non-glyph object carries NO_DIGIT).
PAD = 0
_BG0 = 1
_BGC0 = _BG0 + len(BACKGROUNDS)
_KIND0 = _BGC0 + len(BG_COLORS)
_COLOR0 = _KIND0 + len(KINDS)
_SIZE0 = _COLOR0 + len(COLORS)
_X0 = _SIZE0 + BINS
_Y0 = _X0 + BINS
_TEX0 = _Y0 + BINS
_DIGIT0 = _TEX0 + len(TEXTURES)
NO_DIGIT = _DIGIT0 + 10
VOCAB = NO_DIGIT + 1
PER_OBJECT = 7
# 3x5 bitmaps of the glyphs 0-9 (rows top to bottom, 3 bits each)
_GLYPHS = np.array([[int(b) for b in g] for g in
                    ["111101101101111", "010110010010111", "111001111100111", "111001111001111", "101101111001001",
                     "111100111001111", "111100111101111", "111001010010010", "111101111101111", "111101111001111"]],
                   dtype=bool).reshape(10, 5, 3)
_OFFSETS = np.array([(dx, dy) for dy in range(-JITTER, JITTER + 1) for dx in range(-JITTER, JITTER + 1)])
_PHASES = np.array([(px, py) for py in range(0, CHECKER, 2) for px in range(0, CHECKER, 2)])


@dataclass(frozen=True)
class WorldSpec:
    size: int = 32
    max_objects: int = 5

    @property
    def tokens(self) -> int:
        return 2 + PER_OBJECT * self.max_objects


@dataclass(frozen=True)
class Obj:
    kind: int
    color: int
    size: int  # bin
    x: int  # bin
    y: int  # bin
    texture: int
    digit: int = 0  # glyphs only
    dx: int = 0  # free: not in the caption
    dy: int = 0


@dataclass(frozen=True)
class Scene:
    bg: int
    bg_color: int
    objs: tuple[Obj, ...]
    phase: tuple[int, int] = (0, 0)  # free: checker phase


def sample_scene(rng: np.random.Generator, complexity: float, spec: WorldSpec) -> Scene:
    """A caption's content and its free variables; complexity in [0, 1] sets objects, kinds, textures."""
    c = float(np.clip(complexity, 0.0, 1.0))
    n = 1 + int(round(c * (spec.max_objects - 1)))
    bg = 0 if c < 0.3 else (1 if c < 0.7 else 2)
    objs = []
    for _ in range(n):
        kind = int(rng.integers(len(KINDS))) if rng.random() < 0.3 + 0.7 * c else int(rng.integers(2))
        tex = int(rng.integers(1, len(TEXTURES))) if rng.random() < c else 0
        dx, dy = (int(v) for v in rng.integers(-JITTER, JITTER + 1, 2))
        objs.append(Obj(kind, int(rng.integers(len(COLORS))), int(rng.integers(BINS)), int(rng.integers(BINS)),
                        int(rng.integers(BINS)), tex, int(rng.integers(10)), dx, dy))
    phase = tuple(int(v) for v in _PHASES[rng.integers(len(_PHASES))])
    return Scene(bg, int(rng.integers(len(BG_COLORS))), tuple(objs), phase)


def _grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5  # pixel centres, [S, S] each
    return yy, xx


def background(scene: Scene, s: int, phase: np.ndarray | None = None) -> np.ndarray:
    """[3, S, S], or [P, 3, S, S] for P checker phases [P, 2]."""
    col = BG_COLORS[scene.bg_color][:, None, None]
    yy, xx = _grid(s)
    if scene.bg == 1:
        img = np.broadcast_to(col * np.linspace(1.3, 0.4, s, dtype=np.float32)[None, None, :], (3, s, s)).clip(-1, 1)
        return img.copy() if phase is None else np.broadcast_to(img, (len(phase), 3, s, s)).copy()
    if scene.bg == 2:
        ph = np.asarray([scene.phase] if phase is None else phase)  # [P, 2]
        cell = ((np.floor((xx[None] + ph[:, 0, None, None]) / CHECKER) + np.floor((yy[None] + ph[:, 1, None, None])
                 / CHECKER)) % 2)[:, None]  # [P, 1, S, S]
        img = col[None] * (1.0 - 0.9 * cell) + 0.25 * cell
        return img[0] if phase is None else img
    img = np.broadcast_to(col, (3, s, s)).copy()
    return img if phase is None else np.broadcast_to(img, (len(phase), 3, s, s)).copy()


def object_mask(o: Obj, s: int, offsets: np.ndarray | None = None) -> np.ndarray:
    """Pixels the object covers: [S, S], or [K, S, S] for K free offsets [K, 2]."""
    off = np.asarray([(o.dx, o.dy)] if offsets is None else offsets, dtype=np.float32)  # [K, 2]
    yy, xx = _grid(s)
    r = s * (0.10 + 0.07 * o.size)
    dx = xx[None] - (s * (0.2 + 0.2 * o.x) + off[:, 0, None, None])  # [K, S, S]
    dy = yy[None] - (s * (0.2 + 0.2 * o.y) + off[:, 1, None, None])
    kind = KINDS[o.kind]
    if kind == "circle":
        mask = dx ** 2 + dy ** 2 <= r ** 2
    elif kind == "square":
        mask = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    elif kind == "triangle":
        mask = (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    elif kind == "ring":
        mask = (dx ** 2 + dy ** 2 <= r ** 2) & (dx ** 2 + dy ** 2 >= (0.55 * r) ** 2)
    else:  # a 3x5 glyph scaled to the object's box
        gx = np.floor((dx + r) / (2 * r) * 3).astype(int)
        gy = np.floor((dy + r) / (2 * r) * 5).astype(int)
        inside = (gx >= 0) & (gx < 3) & (gy >= 0) & (gy < 5)
        mask = inside & _GLYPHS[o.digit][np.clip(gy, 0, 4), np.clip(gx, 0, 2)]
    if TEXTURES[o.texture] == "stripes":
        mask &= ((np.floor((xx + yy) / 2) % 2) == 0)[None]
    elif TEXTURES[o.texture] == "dots":
        mask &= ((np.floor(xx) % 3 == 0) | (np.floor(yy) % 3 == 0))[None]
    return mask[0] if offsets is None else mask


def render(scene: Scene, spec: WorldSpec) -> np.ndarray:
    """The true image of a scene: [3, S, S] in [-1, 1]."""
    img = background(scene, spec.size)
    for o in scene.objs:
        img[:, object_mask(o, spec.size)] = COLORS[o.color][:, None]
    return np.clip(img, -1.0, 1.0).astype(np.float32)


def tokens(scene: Scene, spec: WorldSpec) -> np.ndarray:
    t = [_BG0 + scene.bg, _BGC0 + scene.bg_color]
    for o in scene.objs:
        digit = _DIGIT0 + o.digit if KINDS[o.kind] == "glyph" else NO_DIGIT
        t += [_KIND0 + o.kind, _COLOR0 + o.color, _SIZE0 + o.size, _X0 + o.x, _Y0 + o.y, _TEX0 + o.texture, digit]
    return np.array(t + [PAD] * (spec.tokens - len(t)), dtype=np.int64)


def null_tokens(spec: WorldSpec = WorldSpec()) -> np.ndarray:
    """The empty caption [T] (all PAD): the unconditional branch of classifier-free guidance."""
    return np.full(spec.tokens, PAD, dtype=np.int64)


def parse(tok: np.ndarray) -> Scene:
    """The caption's content back from its tokens (free variables at zero)."""
    t = [int(v) for v in tok]
    objs = []
    for k in range(2, len(t) - PER_OBJECT + 1, PER_OBJECT):
        if t[k] == PAD:
            break
        kind, col, size, x, y, tex, dig = (t[k + j] - base for j, base in enumerate(
            (_KIND0, _COLOR0, _SIZE0, _X0, _Y0, _TEX0, _DIGIT0)))
        objs.append(Obj(kind, col, size, x, y, tex, dig if 0 <= dig < 10 else 0))
    return Scene(t[0] - _BG0, t[1] - _BGC0, tuple(objs))


def batch(n: int, rng: np.random.Generator, spec: WorldSpec = WorldSpec(),
          complexity: float | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n samples: images [n, 3, S, S], tokens [n, T], complexity [n] (uniform in [0, 1] if not given)."""
    cs = rng.random(n) if complexity is None else np.broadcast_to(np.asarray(complexity, dtype=np.float64), (n,))
    imgs, toks = [], []
    for c in cs:
        scene = sample_scene(rng, c, spec)
        imgs.append(render(scene, spec))
        toks.append(tokens(scene, spec))
    return np.stack(imgs), np.stack(toks), np.asarray(cs, dtype=np.float32)


def fit(image: np.ndarray, tok: np.ndarray, spec: WorldSpec = WorldSpec(), sweeps: int = 2) -> np.ndarray:
    """The true render of caption `tok` closest (squared error) to `image` [3, S, S]: the free variables
    (checker phase, each object's offset) chosen by coordinate descent, objects in drawing order."""
    scene = parse(tok)
    s, target = spec.size, np.asarray(image, dtype=np.float32)
    masks = [object_mask(o, s) for o in scene.objs]

    def paint(base: np.ndarray, upto: slice) -> np.ndarray:  # base: [K, 3, S, S]
        for o, m in zip(scene.objs[upto], masks[upto]):
            base[:, :, m] = COLORS[o.color][:, None]
        return base

    def best(cands: np.ndarray) -> int:  # cands: [K, 3, S, S]
        return int(((np.clip(cands, -1, 1) - target[None]) ** 2).sum(axis=(1, 2, 3)).argmin())

    for _ in range(sweeps):
        if scene.bg == 2:
            k = best(paint(background(scene, s, _PHASES), slice(None)))
            scene = replace(scene, phase=tuple(int(v) for v in _PHASES[k]))
        for i, o in enumerate(scene.objs):
            cand = paint(np.repeat(background(scene, s)[None], len(_OFFSETS), 0), slice(0, i))
            cand = np.where(object_mask(o, s, _OFFSETS)[:, None], COLORS[o.color][None, :, None, None], cand)
            k = best(paint(cand, slice(i + 1, None)))
            o = replace(o, dx=int(_OFFSETS[k][0]), dy=int(_OFFSETS[k][1]))
            masks[i] = object_mask(o, s)
            scene = replace(scene, objs=scene.objs[:i] + (o,) + scene.objs[i + 1:])
    return render(scene, spec)
