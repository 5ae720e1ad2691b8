"""Pressing Cancel at a given training step, as ComfyUI's UI does (imports ComfyUI only when used)."""
import contextlib

import pytest


@contextlib.contextmanager
def cancel_at(step: int):
    """Within the block, ComfyUI's interrupt flag is raised when the progress bar reports `step`; the
    block must end with ComfyUI's InterruptProcessingException. ComfyUI 0.33's progress bar sends at
    most ten updates a second, so the throttle is off here and every step is seen."""
    import comfy.model_management
    import comfy.utils
    seen = []

    def hook(value, total, preview, node_id=None):
        seen.append(value)
        if value == step:
            comfy.model_management.interrupt_current_processing(True)
    throttle = getattr(comfy.utils, "PROGRESS_THROTTLE_MIN_INTERVAL", None)
    if throttle is not None:
        comfy.utils.PROGRESS_THROTTLE_MIN_INTERVAL = 0.0
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            yield seen
        assert step in seen, f"the progress bar never reported step {step}: {seen}"
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        comfy.model_management.interrupt_current_processing(False)
        if throttle is not None:
            comfy.utils.PROGRESS_THROTTLE_MIN_INTERVAL = throttle
