"""Calibration cache: a quantized graph is reused only when everything that made it is the same.

Keyed by the weights' sha256, the calibration images' sha256, their count and seed, the preprocessing, the
method and its options, and the precision policy. One entry per (weights, method, SmoothQuant strength, outlier
split): a mismatch says which inputs changed and rebuilds — a stale calibration is never silently reused.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from ..files import all_ours, cache_root, replace_directory
from ..imports import require

if TYPE_CHECKING:
    import onnx

# Bumped whenever what we do around a calibrator changes its result (e.g. keeping policy-float nodes float).
REVISION = 2
Entry = TypeVar("Entry")     # what one cache entry holds (a graph, a statistics file)


def calibration_key(weights_sha256: str, calibration, method: dict, **extra) -> dict:
    """What a calibration result depends on; `extra` adds what a consumer adds (policy, TensorRT version, …)."""
    return {"revision": REVISION, "weights_sha256": weights_sha256, "images_sha256": calibration.fingerprint(),
            "count": len(calibration.images), "seed": calibration.seed, "preprocess": calibration.preprocess.to_dict(),
            "method": method, **extra}


def changed_fields(stored: dict, key: dict) -> list[str]:
    return sorted(name for name in set(stored) | set(key) if stored.get(name) != key.get(name))


def policy_digest(names: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


def cached_quantization(key: dict, build: Callable[[], onnx.ModelProto], root: Path | None = None,
                        log=print) -> tuple[onnx.ModelProto, bool]:
    """Return (quantized graph, reused?) for `key`, building and storing it when no matching entry exists."""
    onnx = require("onnx", extra="export", what="calibration")
    return cached_entry(key, build, "image.qdq.onnx", load=lambda path: onnx.load(str(path)),
                        save=lambda model, path: onnx.save(model, str(path)), root=root, log=log)


def entry_name(key: dict) -> str:
    """The entry of `key`: the outlier remedy calibrates several SmoothQuant strengths of one model, and its graph
    with the outlier channels split off; one entry per (weights, method) would let each replace the last, so every
    export would recalibrate them all."""
    method = key["method"]
    alpha = method.get("smooth_quant_alpha")
    return (f"{key['weights_sha256'][:16]}-{method['method']}" + (f"-sq{alpha:g}" if alpha is not None else "")
            + ("-split" if "outlier_split" in key else ""))


def cached_entry(key: dict, build: Callable[[], Entry], file_name: str, load: Callable[[Path], Entry],
                 save: Callable[[Entry, Path], object], root: Path | None = None, log=print) -> tuple[Entry, bool]:
    """(result, reused?) for `key`: `load(path)` of the stored `file_name` when its key matches, else `build()`,
    stored atomically with `save(result, path)` (a rebuilt entry replaces the stale one, never half of it)."""
    root = Path(root) if root is not None else cache_root()
    entry = root / "calibration" / entry_name(key)
    key_file, result_file = entry / "key.json", entry / file_name
    if key_file.is_file() and result_file.is_file():
        stored = json.loads(key_file.read_text())
        if stored == key:
            log(f"reusing calibration cache {entry}")
            return load(result_file), True
        log(f"calibration cache {entry} was made with different {', '.join(changed_fields(stored, key))}; "
            f"recalibrating")
    result = build()
    with replace_directory(entry, ours=all_ours, what="calibration cache entry",
                           announce=False, log=log) as staging:
        save(result, staging / file_name)
        (staging / key_file.name).write_text(json.dumps(key, indent=2, sort_keys=True))
    return result, False
