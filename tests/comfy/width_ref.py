"""References for width slicing: a block with hidden channels k.. zeroed is what width k/M must give."""


def zero_fused_single_block_beyond(blk, k: int) -> None:
    """Flux-style single block (attention and MLP fused): linear1 rows [3D + k:] and linear2 columns
    [D + k:] are the MLP's hidden channels k.. (call under torch.no_grad)."""
    d = blk.linear2.weight.shape[0]
    blk.linear1.weight[3 * d + k:] = 0
    blk.linear1.bias[3 * d + k:] = 0
    blk.linear2.weight[:, d + k:] = 0
