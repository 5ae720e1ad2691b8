"""Push a run to the browser while it samples: a header, one column per finished step, the final
payload. The Apply node runs before sampling, so these go out as server events addressed to the Apply
node's id; with no server (headless use, tests) nothing is sent."""
from __future__ import annotations

import logging

from ..elastic_core import heatmap
from ..elastic_core.stats import RunRecord

EVENT = "elastic_dit.{}"
log = logging.getLogger("elastic_dit")


def server_instance():
    try:
        import server  # ComfyUI's; absent or without an instance when ComfyUI runs headless
    except ImportError:
        return None
    return getattr(server.PromptServer, "instance", None)


class LiveFeed:
    def __init__(self, node_id: str | None):
        self.node_id = node_id
        self.server = server_instance() if node_id is not None else None
        self._sent_events = 0
        self._started = False

    def _send(self, kind: str, data: dict) -> None:
        if self.server is None:
            return
        try:
            self.server.send_sync(EVENT.format(kind), {"node": str(self.node_id), **data}, self.server.client_id)
        except Exception as e:  # a view that cannot be updated must never stop sampling
            log.warning("Elastic DiT: live view update failed: %s", e)
            self.server = None

    def step_done(self, record: RunRecord, step: int) -> None:
        if not self._started:
            self._send("start", heatmap.live_header(record))
            self._started = True
        self._send("step", heatmap.step_column(record, self._sent_events, step))
        self._sent_events = len(record)

    def done(self, record: RunRecord) -> None:
        self._send("done", heatmap.payload(record))
