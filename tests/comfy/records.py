"""Reading what a patched model did (imports nothing of ComfyUI, so test modules can import it early)."""


def block_refs(pack, model):
    """The pack's BlockRefs for `model` (through its own family adapter)."""
    dm = model.get_model_object("diffusion_model")
    return pack.nodes.adapters.adapter_for(dm).blocks(dm)


def event_rows(rec):
    """The record's events as dicts, stream names spelled out."""
    cols = rec.events
    out = []
    for vals in zip(*cols.values()):
        e = dict(zip(cols, vals))
        e["stream"] = rec.streams[e["stream"]]
        out.append(e)
    return out
