"""Reading what a patched model did (imports nothing of ComfyUI, so test modules can import it early)."""

SKIP, REUSE, RUN = 0, 1, 2  # elastic_core.stats action codes (checked against the pack by pack_env)
REUSE_BAND = 0.505  # a gate probability in [tau, tau + delta] at the node's defaults tau 0.5, delta 0.015


def pack_env(comfy):
    """(nodes, pack, tiny, elastic) for a test module's `env` fixture, the action codes checked."""
    from tests.comfy import elastic, tiny
    nodes, pack = comfy
    stats = pack.elastic_core.stats
    assert (stats.SKIP, stats.REUSE, stats.RUN) == (SKIP, REUSE, RUN)
    return nodes, pack, tiny, elastic


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


def assert_batch_is_each_alone(last_record, patched, run, straddled, streams):
    """A batch of two samples whose routers disagree at step 0 on block `straddled` (sample 0 skips,
    sample 1 runs) samples each row as that sample alone does, deciding the same way. `run(model,
    rows)` samples rows of the batch ([2, ...] for all); returns the batch's output."""
    import torch
    batch = run(patched)
    rec = last_record(patched)
    assert set(rec.streams) == set(streams) and sorted(set(rec.events["sample"])) == [0, 1], rec.streams
    first = {(e["stream"], e["sample"]): e["action"] for e in event_rows(rec)
             if e["step"] == 0 and e["block"] == straddled}
    for stream in streams:
        assert first[(stream, 0)] == SKIP and first[(stream, 1)] == RUN, first
    assert rec.counts()["reuse"] > 0
    batch_rows = event_rows(rec)
    key = ("step", "block", "stream", "action", "width")
    for r in range(2):
        alone = run(patched, slice(r, r + 1))
        assert torch.allclose(batch[r:r + 1], alone, atol=1e-5), (r, (batch[r:r + 1] - alone).abs().max())
        mine = [tuple(e[k] for k in key) for e in batch_rows if e["sample"] == r]
        solo = [tuple(e[k] for k in key) for e in event_rows(last_record(patched))]
        assert mine == solo, f"sample {r} decided differently in the batch than alone"
    return batch
