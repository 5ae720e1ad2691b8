"""Real-ComfyUI tests: skipped, with the reason printed, where no ComfyUI is found."""
import pytest

import tests.comfy  # noqa: F401  (bind our `tests` package before ComfyUI, which has one too, joins sys.path)
from devtools.comfy_boot import boot, find_comfyui, version

COMFY_PATH, HOW = find_comfyui()


def pytest_report_header(config):
    if COMFY_PATH is None:
        return f"ComfyUI tests: SKIPPED - {HOW}"
    return f"ComfyUI tests: ComfyUI {version(COMFY_PATH)} at {COMFY_PATH} (found via {HOW})"


@pytest.fixture(scope="session")
def comfy():
    """(ComfyUI's nodes module, this pack's module) on a real ComfyUI, or a skip with the reason."""
    if COMFY_PATH is None:
        pytest.skip(HOW)
    try:
        return boot(COMFY_PATH)
    except ImportError as e:
        pytest.skip(f"ComfyUI at {COMFY_PATH} cannot be imported by this Python ({e}); "
                    "install its requirements.txt, or run .ci/comfy-tests")
