"""Every example workflow has the thumbnail ComfyUI's template browser shows beside it, and no
thumbnail is left over from a workflow that is gone."""
import pathlib

WF = pathlib.Path(__file__).resolve().parents[2] / "workflows"


def test_every_workflow_has_a_jpeg_thumbnail():
    flows = {p.stem for p in WF.glob("*.json")}
    thumbs = {p.stem for p in WF.glob("*.jpg")}
    assert flows, "no workflows found"
    assert flows == thumbs, f"without a thumbnail: {sorted(flows - thumbs)}; orphaned: {sorted(thumbs - flows)}"
    for stem in thumbs:
        data = (WF / f"{stem}.jpg").read_bytes()
        assert data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9", f"{stem}.jpg is not a JPEG file"
        assert 2_000 < len(data) < 200_000, f"{stem}.jpg is {len(data)} bytes (expected a small picture)"
