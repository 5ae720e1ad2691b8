"""The tiny real-ComfyUI models used by these tests live in devtools (the benchmark builds them too)."""
from devtools.tiny_models import *  # noqa: F401,F403
from devtools.tiny_models import build, build_from_config, conds, latent, logit, sample  # noqa: F401
