"""The toy world and the toy DiT: complexity is a real dial, the model is a working rectified flow."""
import numpy as np
import torch

from elastic_core.toy.model import ToyConfig, ToyDiT, flow_loss, sample
from elastic_core.toy.world import PAD, WorldSpec, batch


def test_complexity_adds_objects_and_detail():
    rng = np.random.default_rng(0)
    imgs_lo, toks_lo, _ = batch(16, rng, complexity=0.0)
    imgs_hi, toks_hi, _ = batch(16, rng, complexity=1.0)
    n_lo, n_hi = (toks_lo != PAD).sum(1), (toks_hi != PAD).sum(1)
    assert (n_lo == 7).all() and (n_hi == WorldSpec().tokens).all()  # 1 vs 6 objects, 6 tokens each + background
    detail = lambda x: np.abs(np.diff(x, axis=-1)).mean()  # noqa: E731
    assert detail(imgs_hi) > 2 * detail(imgs_lo)
    assert imgs_lo.shape == (16, 3, 32, 32) and -1 <= imgs_hi.min() and imgs_hi.max() <= 1


def test_toy_dit_starts_as_identity_and_learns():
    torch.manual_seed(0)
    cfg = ToyConfig(dim=32, heads=2, depth=12)
    m = ToyDiT(cfg)
    assert len(m.blocks) >= 12 and len(m.specs()) == 12
    x, tok, _ = (torch.from_numpy(a) for a in batch(8, np.random.default_rng(1)))
    img, txt, vec = m.embed(x, torch.rand(8), tok)
    blk_out = m.blocks[0](img, txt, vec)
    assert torch.equal(blk_out[0], img)  # adaLN-zero init
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    first = flow_loss(m, x, tok, g).item()
    for _ in range(30):
        loss = flow_loss(m, x, tok, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first
    out = sample(lambda xt, t, i: m(xt, t, tok), torch.randn(8, 3, 32, 32), steps=3)
    assert out.shape == x.shape and torch.isfinite(out).all()
