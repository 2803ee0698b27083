"""The block probe of `groupvit-edge diagnose` on TensorRT: the artifact's image engine rebuilt with the same plan
from the same ONNX, block tensors marked as outputs, batch of one."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ...artifact import GraphRecord, Manifest
from ...errors import UserError
from ..probes import IMAGE_INPUT, REFERENCE_SUFFIX, Probe, onnx_module, probe_graph
from . import cuda, install
from .build import BatchProfile, BuildPlan, build_engine, kept_float_nodes
from .runner import EngineSession, Options


def block_probe(manifest: Manifest, outputs, forced, options: Options) -> BlockProbe:
    return BlockProbe(manifest, outputs, forced, options)


class BlockProbe(Probe):
    """Engines built like the artifact's image engine (its recorded plan and source ONNX), block tensors marked
    as outputs, batch of one. `trt` and `memory` are the real module and device memory unless given."""

    def __init__(self, manifest: Manifest, outputs, forced, options, trt=None, memory=None):
        self._trt = trt if trt is not None else install.import_tensorrt()
        self._memory = memory if memory is not None else cuda.open_device_memory(options.device_memory, options.gpu)
        self._scratch = tempfile.TemporaryDirectory(prefix="groupvit-edge-blocks-")
        self._stream = self._memory.stream()
        runtime = self._trt.Runtime(install.tensorrt_logger(self._trt))
        self._sessions = {}
        for kind, reads in (("free", ()), ("forced", forced)):
            engine, missing = build_probe_engine(self._trt, manifest, outputs, reads, Path(self._scratch.name), kind)
            self.missing = missing if kind == "free" else self.missing
            self._sessions[kind] = EngineSession(self._trt, runtime, engine, self._memory, self._stream)
        compute = manifest.precision.compute
        self.description = f"probe engines in tensorrt {self._trt.__version__} ({compute}, block outputs marked)"

    def run(self, window: np.ndarray, reference: dict | None = None) -> dict[str, np.ndarray]:
        session = self._sessions["free" if reference is None else "forced"]
        forced = reference if reference is not None else {}    # the free engine reads nothing but the window
        feeds = {name: (window[None] if name == IMAGE_INPUT else forced[name.removesuffix(REFERENCE_SUFFIX)])
                 for name in session.inputs}
        return session.run(feeds)

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()
        self._stream.close()
        self._scratch.cleanup()


def build_probe_engine(trt, manifest, outputs, forced, directory: Path, kind: str = "free",
                       log=lambda message: None) -> tuple[Path, list[str]]:
    """(engine path, tensors the graph lacks): the artifact's image engine rebuilt with the same plan from the
    same ONNX, `outputs` as extra graph outputs (the ONNX parser marks graph outputs as network outputs) and
    `forced` tensors read from extra inputs (see `probe_graph`)."""
    record = manifest.engines["image"]
    fields: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value
                              for key, value in record.extra["plan"].items()}
    plan = BuildPlan(**fields)
    if plan.calibrator:
        raise UserError(f"{manifest.directory} holds an implicitly calibrated INT8 engine, whose calibration cannot "
                        f"be replayed with block outputs marked: export trt-int8 with --int8-route explicit (the QDQ "
                        f"graph) to compare it per block")
    source = manifest.directory / record.extra["source"]
    if not source.is_file():
        raise UserError(f"{manifest.directory} lacks {source.name}, the ONNX its image engine was built from: "
                        f"re-run `groupvit-edge export`")
    onnx = onnx_module()
    model = onnx.load(str(source))
    missing = probe_graph(model, outputs, forced)
    exposed = directory / f"image.blocks-{kind}.onnx"
    onnx.save(model, str(exposed))
    inputs = [{"name": value.name, "shape": _manifest_shape(value)} for value in model.graph.input]
    graph = GraphRecord(exposed.name, "onnx", plan.source, inputs, record.outputs)
    engine = directory / f"image.blocks-{kind}.engine"
    build_engine(trt, exposed, engine, plan, graph, BatchProfile(1, 1, 1), workspace_mb=1024, timing_cache=None,
                 pin=kept_float_nodes(exposed) if plan.pin_float32 else None, log=log)
    return engine, missing


def _manifest_shape(value) -> list:
    """An ONNX input's shape as the manifest writes it: named axes as names, the rest as numbers."""
    return [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]
