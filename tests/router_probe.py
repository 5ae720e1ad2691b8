"""Routers set by hand so that chosen rows of a batch decide differently (for both test suites).

Works on any router with the released layout (`out.2` gate head and `width_head` read the mean trunk
feature h [B, H]); imports nothing of the pack, so tests/core and tests/comfy share it.
"""
import torch


@torch.no_grad()
def features(router, tokens, cond) -> torch.Tensor:
    """The trunk features h [B, H] the heads read, found by probing the linear gate head."""
    head = router.out[2]
    saved = head.weight.clone(), head.bias.clone()
    head.bias.zero_()
    cols = []
    for j in range(head.weight.shape[1]):
        head.weight.zero_()
        head.weight[0, j] = 1.0
        cols.append(router(tokens, cond).gate_logit.float())
    head.weight.copy_(saved[0])
    head.bias.copy_(saved[1])
    return torch.stack(cols, 1)


def _split(h: torch.Tensor, labels, margin: float):
    """A direction w and offset c with (h @ w - c) * scale < -margin for label 0, > margin for label 1."""
    s = torch.tensor(labels)
    w = h[s == 1].mean(0) - h[s == 0].mean(0)
    proj = h @ w
    lo, hi = proj[s == 0].max(), proj[s == 1].min()
    assert lo < hi, "cannot separate these rows with a linear head (test setup)"
    scale = 2 * margin / (hi - lo)
    return w * scale, float((lo + hi) / 2 * scale)


@torch.no_grad()
def split_gate(router, tokens, cond, labels, margin: float = 8.0) -> None:
    """Gate logit < -margin/2 for rows labelled 0 (skipped), > margin/2 for rows labelled 1."""
    w, c = _split(features(router, tokens, cond), labels, margin)
    router.out[2].weight.copy_(w.unsqueeze(0))
    router.out[2].bias.fill_(-c)
    logits = router(tokens, cond).gate_logit
    s = torch.tensor(labels)
    assert ((logits < -margin / 2) == (s == 0)).all() and ((logits > margin / 2) == (s == 1)).all()


@torch.no_grad()
def split_width(router, tokens, cond, labels, low: int = 0, high: int = -1, margin: float = 20.0) -> None:
    """Width index `low` for rows labelled 0 and `high` for rows labelled 1; the gate is left as it is."""
    w, c = _split(features(router, tokens, cond), labels, margin)
    head = router.width_head
    n = head.weight.shape[0]
    low, high = low % n, high % n
    head.weight.zero_()
    head.bias.fill_(-1e4)
    head.weight[low], head.bias[low] = -w, c
    head.weight[high], head.bias[high] = w, -c
    got = router(tokens, cond).width_index.tolist()
    want = [low if x == 0 else high for x in labels]
    assert got == want, (got, want)
