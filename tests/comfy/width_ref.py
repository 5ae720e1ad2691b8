"""References for width slicing: a block with hidden channels k.. zeroed is what width k/M must give.
Call under torch.no_grad. Gated (SwiGLU-type) in-projections hold [gate M; up M]: both halves lose
their channels k.., and so does a separate up-projection."""


def _zero_rows(fc, start: int, stop: int, m: int, k: int) -> None:
    for a in range(start, stop, m):  # one M-row section per half: [a + k, a + m) are channels k..
        fc.weight[a + k:a + m] = 0
        if fc.bias is not None:
            fc.bias[a + k:a + m] = 0


def zero_mlp_beyond(fc_in, fc_out, k: int, fc_up=None) -> None:
    """A stand-alone MLP fc_in (M or 2M rows) [-> fc_up (M rows)] -> fc_out (M columns)."""
    m = fc_out.weight.shape[1]
    for fc in (fc_in, fc_up):
        if fc is not None:
            _zero_rows(fc, 0, fc.weight.shape[0], m, k)
    fc_out.weight[:, k:] = 0


def zero_fused_single_block_beyond(blk, k: int) -> None:
    """Flux-style single block (attention and MLP fused): linear1 rows [3D + k: 3D + M] (and, gated,
    [3D + M + k:]) and linear2 columns [D + k:] are the MLP's hidden channels k..."""
    d = blk.linear2.weight.shape[0]
    m = blk.linear2.weight.shape[1] - d
    _zero_rows(blk.linear1, 3 * d, blk.linear1.weight.shape[0], m, k)
    blk.linear2.weight[:, d + k:] = 0
