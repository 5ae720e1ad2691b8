"""Result files of the command line (benchmarks, the demo): JSON, their folder made as needed."""
from __future__ import annotations

import json
import os


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
