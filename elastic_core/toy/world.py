"""A generated image world whose complexity is a dial: from one flat shape on a plain background to
many overlapping, textured shapes and glyphs on a busy background. Conditioning tokens describe the
content, so a small DiT can learn text-to-image on it in minutes on a CPU.

Images are [3, S, S] in [-1, 1]; tokens are [T] ints: a background token, then per object
(kind, colour, size, x, y, texture), padded with PAD.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("circle", "square", "triangle", "ring", "glyph")
COLORS = np.array([[230, 60, 50], [50, 170, 80], [60, 90, 220], [240, 200, 40], [200, 80, 200], [40, 200, 210],
                   [240, 140, 40], [245, 245, 245]], dtype=np.float32) / 127.5 - 1.0
BACKGROUNDS = ("plain", "gradient", "noise")
TEXTURES = ("flat", "stripes", "dots")
BINS = 4  # size and position buckets
# Vocabulary layout: PAD, backgrounds, kinds, colours, size / x / y bins, textures.
PAD = 0
_BG0 = 1
_KIND0 = _BG0 + len(BACKGROUNDS)
_COLOR0 = _KIND0 + len(KINDS)
_SIZE0 = _COLOR0 + len(COLORS)
_X0 = _SIZE0 + BINS
_Y0 = _X0 + BINS
_TEX0 = _Y0 + BINS
VOCAB = _TEX0 + len(TEXTURES)
# 3x5 bitmaps of the glyphs 0-9 (rows top to bottom, 3 bits each)
_GLYPHS = ["111101101101111", "010110010010111", "111001111100111", "111001111001111", "101101111001001",
           "111100111001111", "111100111101111", "111001010010010", "111101111101111", "111101111001111"]


@dataclass(frozen=True)
class WorldSpec:
    size: int = 32
    max_objects: int = 6

    @property
    def tokens(self) -> int:
        return 1 + 6 * self.max_objects


@dataclass(frozen=True)
class Obj:
    kind: int
    color: int
    size: int  # bin
    x: int  # bin
    y: int  # bin
    texture: int
    glyph: int = 0


def sample_scene(rng: np.random.Generator, complexity: float, spec: WorldSpec) -> tuple[int, list[Obj]]:
    """A background and objects; complexity in [0, 1] sets their number, textures and glyphs."""
    c = float(np.clip(complexity, 0.0, 1.0))
    n = 1 + int(round(c * (spec.max_objects - 1)))
    bg = 0 if c < 0.3 else (1 if c < 0.7 else 2)
    objs = []
    for _ in range(n):
        kind = int(rng.integers(len(KINDS))) if rng.random() < 0.3 + 0.7 * c else int(rng.integers(2))
        tex = int(rng.integers(1, len(TEXTURES))) if rng.random() < c else 0
        objs.append(Obj(kind, int(rng.integers(len(COLORS))), int(rng.integers(BINS)), int(rng.integers(BINS)),
                        int(rng.integers(BINS)), tex, int(rng.integers(10))))
    return bg, objs


def _background(bg: int, color: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    img = np.broadcast_to(color[:, None, None], (3, s, s)).copy()
    if bg == 1:
        img *= np.linspace(0.3, 1.0, s, dtype=np.float32)[None, None, :]
    elif bg == 2:
        img += rng.normal(0, 0.2, (3, s, s)).astype(np.float32)
    return img


def render(bg: int, objs: list[Obj], spec: WorldSpec, rng: np.random.Generator) -> np.ndarray:
    s = spec.size
    img = _background(bg, COLORS[(bg * 3 + 1) % len(COLORS)] * 0.5, s, rng)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    for o in objs:
        r = s * (0.10 + 0.07 * o.size)
        cx, cy = s * (0.2 + 0.2 * o.x), s * (0.2 + 0.2 * o.y)
        dx, dy = xx - cx, yy - cy
        if KINDS[o.kind] == "circle":
            mask = dx ** 2 + dy ** 2 <= r ** 2
        elif KINDS[o.kind] == "square":
            mask = (np.abs(dx) <= r) & (np.abs(dy) <= r)
        elif KINDS[o.kind] == "triangle":
            mask = (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
        elif KINDS[o.kind] == "ring":
            mask = (dx ** 2 + dy ** 2 <= r ** 2) & (dx ** 2 + dy ** 2 >= (0.55 * r) ** 2)
        else:  # a 3x5 glyph scaled to the object's box
            gx = np.floor((dx + r) / (2 * r) * 3).astype(int)
            gy = np.floor((dy + r) / (2 * r) * 5).astype(int)
            inside = (gx >= 0) & (gx < 3) & (gy >= 0) & (gy < 5)
            bits = np.array([int(b) for b in _GLYPHS[o.glyph]], dtype=bool).reshape(5, 3)
            mask = inside & bits[np.clip(gy, 0, 4), np.clip(gx, 0, 2)]
        if TEXTURES[o.texture] == "stripes":
            mask &= (np.floor((xx + yy) / 2) % 2) == 0
        elif TEXTURES[o.texture] == "dots":
            mask &= ((np.floor(xx) % 3 == 0) | (np.floor(yy) % 3 == 0))
        img[:, mask] = COLORS[o.color][:, None]
    return np.clip(img, -1.0, 1.0)


def tokens(bg: int, objs: list[Obj], spec: WorldSpec) -> np.ndarray:
    t = [_BG0 + bg]
    for o in objs:
        t += [_KIND0 + o.kind, _COLOR0 + o.color, _SIZE0 + o.size, _X0 + o.x, _Y0 + o.y, _TEX0 + o.texture]
    return np.array(t + [PAD] * (spec.tokens - len(t)), dtype=np.int64)


def batch(n: int, rng: np.random.Generator, spec: WorldSpec = WorldSpec(),
          complexity: float | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n samples: images [n, 3, S, S], tokens [n, T], complexity [n] (uniform in [0, 1] if not given)."""
    cs = rng.random(n) if complexity is None else np.broadcast_to(np.asarray(complexity, dtype=np.float64), (n,))
    imgs, toks = [], []
    for c in cs:
        bg, objs = sample_scene(rng, c, spec)
        imgs.append(render(bg, objs, spec, rng))
        toks.append(tokens(bg, objs, spec))
    return np.stack(imgs), np.stack(toks), np.asarray(cs, dtype=np.float32)
