"""Browser end-to-end tests: a real ComfyUI server with this pack, driven in headless Chromium."""
from tests.browser.support import skip_reason


def pytest_report_header(config):
    why = skip_reason()
    return f"browser tests: SKIPPED - {why}" if why else "browser tests: " + skip_reason.found
