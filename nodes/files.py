"""Where router files live: `models/elastic_routers/` (and extra_model_paths.yaml's `elastic_routers`),
plus the authors' released full E-DiT checkpoints found among `diffusion_models`."""
from __future__ import annotations

import os

import folder_paths

from ..elastic_core.checkpoint import PICKLE_EXTENSIONS, has_released_routers

FOLDER = "elastic_routers"
RELEASED_PREFIX = "diffusion_models/"
_LISTED = (".safetensors", ".sft") + PICKLE_EXTENSIONS  # pickles are listed so that loading says why not


def register_folder() -> None:
    """Register models/elastic_routers and make it, so that a fresh install shows where router files go."""
    path = os.path.join(folder_paths.models_dir, FOLDER)
    folder_paths.add_model_folder_path(FOLDER, path, is_default=True)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:  # a read-only models folder: listing still works, training says where it cannot write
        pass


def taken(folder: str, name: str) -> bool:
    """Whether `name` exists in ANY folder of this type (models/<type> and extra_model_paths.yaml's):
    ComfyUI resolves a name to the first folder that has it, so a new file of that name in the first
    folder would hide the user's file in a later one."""
    try:
        paths = folder_paths.get_folder_paths(folder)
    except KeyError:
        return False
    return any(os.path.exists(os.path.join(p, name)) for p in paths)


def _files(folder: str) -> list[str]:
    try:
        names = folder_paths.get_filename_list(folder)
    except KeyError:
        return []
    return [n for n in names if n.lower().endswith(_LISTED)]


def router_names() -> list[str]:
    """Router files, then released checkpoints (`diffusion_models/<name>`) that hold E-DiT routers."""
    released = [RELEASED_PREFIX + n for n in _files("diffusion_models")
                if n.lower().endswith((".safetensors", ".sft"))
                and has_released_routers(folder_paths.get_full_path("diffusion_models", n))]
    return _files(FOLDER) + released


def resolve(name: str) -> str:
    """The full path of a listed name, or a FileNotFoundError naming where it was looked for."""
    folder, rel = ("diffusion_models", name[len(RELEASED_PREFIX):]) if name.startswith(RELEASED_PREFIX) else (FOLDER, name)
    path = folder_paths.get_full_path(folder, rel)
    if path is None:
        raise FileNotFoundError(f"router file {name!r} not found in {folder_paths.get_folder_paths(folder)}")
    return path
