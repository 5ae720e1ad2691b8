"""Image and rank metrics for the toy world (images in [-1, 1], peak-to-peak 2)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB over whole batches [B, C, H, W]."""
    mse = torch.mean((a.clamp(-1, 1) - b.clamp(-1, 1)) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


def db(x: float, width: int = 5) -> str:
    """A PSNR for people: "identical" where the images are (PSNR is infinite), "n/a" where nothing was
    measured, else the number in dB."""
    if x == float("inf"):
        return "identical".rjust(width + 3)
    if not math.isfinite(x):
        return "n/a".rjust(width + 3)
    return f"{x:{width}.2f} dB"


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004, Gaussian window) over a batch [B, C, H, W], per channel."""
    a, b = a.clamp(-1, 1).double(), b.clamp(-1, 1).double()
    c = a.shape[1]
    x = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = (g[:, None] * g[None, :]) / g.sum() ** 2
    k = g.expand(c, 1, window, window)
    blur = lambda t: F.conv2d(t, k, groups=c)  # noqa: E731  (valid region only)
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions)."""
    order = np.argsort(v, kind="mergesort")
    r = np.empty(len(v))
    r[order] = np.arange(len(v), dtype=np.float64)
    for val in np.unique(v):
        tie = v == val
        r[tie] = r[tie].mean()
    return r


def spearman(x, y) -> float:
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx ** 2).sum() * (ry ** 2).sum()))
    return float((rx * ry).sum() / den) if den > 0 else 0.0
