"""The configuration `groupvit-edge tune` chose for an artifact on this device (tuned.json in the artifact), read
where runtimes are opened: `metrics.tune` measures and writes it, `runtimes.open` and `info` read it."""
from __future__ import annotations

import json
from pathlib import Path

from ..artifact import TUNED_NAME
from ..hardware import device_identity

SCHEMA = "groupvit-edge/tune/1"


def recorded_choice(artifact) -> tuple[str, dict] | None:
    """(backend, runtime options) that `tune` recorded for this artifact on this device, or None (none recorded, a
    different device, or an unreadable record — which is ignored: it only ever picks among valid choices).
    `runtimes.tuned_choice` keeps it only where the backend and its options exist."""
    path = Path(artifact) / TUNED_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        chosen = data["chosen"]
        if data.get("schema") != SCHEMA or data.get("device") != device_identity():
            return None
        backend, options = str(chosen["backend"]), dict(chosen["options"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return backend, options
