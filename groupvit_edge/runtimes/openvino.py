"""OpenVINO backend: runs the artifact's IR (image.xml / text.xml) on CPU, GPU, NPU or AUTO.

The precision that runs is always set, never left to the plugin: on CPUs with AVX-512 BF16 or AMX the CPU plugin
runs an "fp32" IR in bf16 unless told otherwise, which moves the outputs by up to ~0.6 (max abs diff) and leaves
only ~98% of pixel labels as f32 gives them.
Each artifact states the precision its IR was validated at (`inference_precision` in the manifest); bf16 (or f16
on devices that have it) is an explicit opt-in, and `description` reports what the compiled model actually uses.

The image graph is compiled with a static batch of one window (what the CPU plugin, NPU and GPU auto-batching
like best); a batch of windows, or a stream of them, goes through an async request queue, which is what the
THROUGHPUT hint's streams run in parallel. The runtime may be called from several threads at once: every call
borrows a request queue of its own.

Compiled models are cached, and every configuration has its own cache directory (`cache_location`): OpenVINO's
own blob key does not always separate configurations, and a CPU plugin importing a blob compiled for another
inference precision crashes the process (seen on Sapphire Rapids: an f32 blob imported for a bf16 compile).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import GraphRecord, Manifest, sha256_file_cached
from ..errors import UserError
from ..files import cache_root
from ..imports import require
from ..options import option
from .base import IMAGE_OUTPUTS, OPTIONAL_IMAGE_OUTPUTS, Configuration, ImageEncoding, Runtime, importable
from .probes import IMAGE_INPUT, REFERENCE_SUFFIX, Probe

NAME = "openvino"
EXTRA = "openvino"
HINTS = ("LATENCY", "THROUGHPUT")
# Inference precisions a user may ask for, as OpenVINO spells them; the capability a device must list for each.
PRECISION_CAPABILITY = {"f32": "FP32", "bf16": "BF16", "f16": "FP16"}
PRECISION_NEEDS = {"f32": "every device has it", "bf16": "on a CPU it needs AVX-512 BF16 or AMX",
                   "f16": "on a CPU it needs AVX-512 FP16 or AMX-FP16; GPUs and NPUs have it"}
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO")


def is_installed() -> bool:
    return importable("openvino")


def install_hint() -> str:
    return f"pip install groupvit-edge[{EXTRA}]"


def devices() -> list[str]:
    """The devices OpenVINO's plugins find here (CPU, GPU, NPU, …)."""
    return list(_import().Core().available_devices)


def unsupported_reason(manifest: Manifest) -> str | None:
    if "image_ir" not in manifest.graphs:
        return "the artifact has no OpenVINO IR (export it with --target openvino-fp32, -fp16 or -int8)"
    return None


def _import():
    return require("openvino", EXTRA)


def default_cache_dir() -> Path:
    """The root of the compiled-model cache shared by every artifact (one directory per configuration below it)."""
    return cache_root() / "openvino"


def cache_location(root: Path, graph_digest: str, device: str, config: dict, shape, version: str) -> Path:
    """The cache directory of one compiled configuration under `root`: the graph's own bytes (`graph_digest`),
    the OpenVINO version, the device, the whole compile config (inference precision, hint, streams, threads) and
    the static input shape each select their own directory, so one directory only ever holds blobs of one
    configuration, whatever OpenVINO's blob key includes."""
    identity = json.dumps({"graph": graph_digest, "openvino": version, "device": device, "shape": shape,
                           "config": {key: str(value) for key, value in config.items()}}, sort_keys=True)
    return root / hashlib.sha256(identity.encode()).hexdigest()[:20]


def parse_streams(value) -> int | str:
    """--streams as OpenVINO takes it: a whole number ≥ 1, or AUTO (any case) for the plugin's own choice."""
    count = _count("streams", value, allow_auto=True)
    return count if count == "AUTO" else int(count)


@dataclass(frozen=True)
class Options:
    device: str = option("CPU", "openvino: device — CPU, GPU, NPU, AUTO or AUTO:GPU,CPU.")
    hint: str = option("LATENCY", "openvino: performance hint.", choices=HINTS)
    streams: int | str | None = option(None, "openvino: THROUGHPUT streams, a number or AUTO.", parse=parse_streams,
                                       metavar="N|AUTO")
    threads: int | None = option(None, "CPU threads (default: one per core).", minimum=1)
    cache_dir: str | None = option(None, "openvino: compiled-model cache directory ('' for none; default "
                                         "$GROUPVIT_EDGE_CACHE/openvino).", metavar="DIR")
    inference_precision: str | None = option(None, "openvino: compute precision — f32, bf16 or f16 (default: the "
                                                   "precision the artifact was validated at).",
                                             choices=tuple(PRECISION_CAPABILITY))


def throughput_options(streams) -> dict:
    """The runtime options that keep `streams` windows in flight at once (`bench --streams`)."""
    return {"hint": "THROUGHPUT", "streams": streams}


def configurations(manifest: Manifest, device: str = "CPU") -> list[Configuration]:
    """Every inference precision `device` offers for the artifact's IR: f32 always, bf16 on CPUs with AVX-512 BF16
    or AMX, f16 where the device computes in f16 — each an explicit runtime option."""
    if unsupported_reason(manifest) is not None or not is_installed():
        return []
    capabilities = _import().Core().get_property(device, "OPTIMIZATION_CAPABILITIES")
    ir = manifest.graphs["image_ir"].precision
    return [Configuration(NAME, {"device": device, "inference_precision": precision},
                          f"openvino {device}, {ir} IR, {precision}")
            for precision, capability in PRECISION_CAPABILITY.items() if capability in capabilities]


def open_runtime(manifest: Manifest, options: Options) -> OpenVinoRuntime:
    return OpenVinoRuntime(manifest, **dataclasses.asdict(options))


def check_device(available: list[str], device: str) -> str:
    """`device` as OpenVINO spells it, if this machine has it: CPU, GPU, GPU.1, NPU, AUTO, AUTO:GPU,CPU, …"""
    device = device.strip().upper()
    name, _, targets = device.partition(":")
    wanted = [t for t in targets.split(",") if t] if name in VIRTUAL_DEVICES else [device]
    for target in wanted:
        if not any(target == found or found.startswith(f"{target}.") for found in available):
            raise UserError(f"OpenVINO device {target} is not available here (available: {', '.join(available)}): "
                            f"choose one of those or AUTO")
    return device


def physical_devices(available: list[str], device: str) -> list[str]:
    name, _, targets = device.partition(":")
    if name not in VIRTUAL_DEVICES:
        return [device]
    return [t for t in targets.split(",") if t] or list(available)


def precision_for(artifact_precision: str, capabilities: list[str], requested: str | None, device: str) -> str:
    """The INFERENCE_PRECISION_HINT to set: the user's explicit choice, else the artifact's where the device has
    it, else f32 (an f16 IR's weights are already rounded; computing them in f32 costs nothing in accuracy)."""
    if requested is not None:
        requested = requested.lower()
        if requested not in PRECISION_CAPABILITY:
            raise UserError(f"inference precision {requested!r} is unknown: use one of "
                            f"{', '.join(PRECISION_CAPABILITY)}")
        if PRECISION_CAPABILITY[requested] not in capabilities:
            raise UserError(f"OpenVINO device {device} cannot compute in {requested} ({PRECISION_NEEDS[requested]}; "
                            f"it offers {', '.join(c for c in capabilities if c in PRECISION_CAPABILITY.values())}): "
                            f"choose another inference precision")
        return requested
    if PRECISION_CAPABILITY.get(artifact_precision) in capabilities:
        return artifact_precision
    return "f32"


def device_precisions(core, devices: list[str], artifact_precision: str, requested: str | None) -> dict[str, str]:
    """`precision_for` each of the physical `devices`, asked for its capabilities."""
    return {device: precision_for(artifact_precision, list(core.get_property(device, "OPTIMIZATION_CAPABILITIES")),
                                  requested, device)
            for device in devices}


def compile_config(device: str, precisions: dict[str, str], hint: str, streams=None, threads=None) -> dict:
    """The config every model of this backend is compiled with: the performance hint, streams and threads when
    given, and the inference precision of each physical device (always set, see the module docstring)."""
    config: dict[str, object] = {"PERFORMANCE_HINT": hint}
    if streams is not None:
        config["NUM_STREAMS"] = _count("streams", streams, allow_auto=True)
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(_count("threads", threads))
    if device in precisions:
        config["INFERENCE_PRECISION_HINT"] = precisions[device]
    else:   # a virtual device forwards per-device settings only through DEVICE_PROPERTIES
        config["DEVICE_PROPERTIES"] = {target: {"INFERENCE_PRECISION_HINT": precision}
                                       for target, precision in precisions.items()}
    return config


def _count(what: str, value, allow_auto: bool = False) -> str:
    if allow_auto and str(value).upper() == "AUTO":
        return "AUTO"
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(number) != str(value).strip():
        raise UserError(f"--{what} {value!r} must be a whole number ≥ 1{' or AUTO' if allow_auto else ''}")
    return str(number)


def _graph_digest(record: GraphRecord, xml: Path, weights: Path) -> str:
    """The IR's identity: the sha256 of its .xml and .bin as the manifest records them (hashed here otherwise)."""
    return "/".join(recorded or sha256_file_cached(path)
                    for recorded, path in ((record.sha256, xml), (record.weights_sha256, weights)))


def _property(compiled, name: str, default):
    try:
        return compiled.get_property(name)
    except RuntimeError:   # plugins differ in which properties a compiled model answers
        return default


class OpenVinoRuntime(Runtime):
    name = NAME

    def __init__(self, manifest: Manifest, device: str = "CPU", hint: str = "LATENCY", streams=None,
                 threads: int | None = None, cache_dir=None, inference_precision: str | None = None):
        ov = _import()
        self._ov = ov
        self.manifest = manifest
        self._core = ov.Core()
        available = list(self._core.available_devices)
        self.device = check_device(available, device)
        self.hint = str(hint).upper()
        if self.hint not in HINTS:
            raise UserError(f"performance hint {hint!r} is unknown: use LATENCY or THROUGHPUT")
        if cache_dir is None:
            cache_dir = default_cache_dir()
        self.cache_dir = Path(cache_dir) if cache_dir else None   # "" or False: no compiled-model cache
        self._physical = physical_devices(available, self.device)
        self.artifact_precision = manifest.graphs["image_ir"].inference_precision or "f32"
        self._precisions = device_precisions(self._core, self._physical, self.artifact_precision,
                                             inference_precision)
        self._image = self._compile("image_ir", compile_config(self.device, self._precisions, self.hint, streams,
                                                               threads), static_batch=True)
        self.inference_precision = self._ran_precision(self._image)
        known = IMAGE_OUTPUTS + OPTIONAL_IMAGE_OUTPUTS
        self._output_names = [name for output in self._image.outputs for name in output.get_names() if name in known]
        self._requests = max(1, int(self._image.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        # Infer requests are not shareable between concurrent calls: each call borrows a queue of its own from
        # this pool and returns it, so threads (and interleaved streams) never touch each other's requests.
        self._idle_queues: queue.SimpleQueue = queue.SimpleQueue()
        self._text: Any = None    # built on first use: a precomputed vocabulary never needs it
        self._text_lock = threading.Lock()
        # The text graph runs once per vocabulary: always f32, whatever the image graph runs in.
        self._text_config = compile_config(self.device, {target: "f32" for target in self._physical}, self.hint,
                                           threads=threads)

    # ------------------------------------------------------------------------------------------- compiling

    def _compile(self, graph: str, config: dict, static_batch: bool):
        xml, weights = self.manifest.graph_path(graph), self.manifest.weights_path(graph)
        if not weights.is_file():
            raise UserError(f"{self.manifest.directory} is missing {weights.name} ({graph} weights) that its "
                            f"manifest names; re-run `groupvit-edge export`")
        try:
            model = self._core.read_model(str(xml), str(weights))
        except RuntimeError as error:
            raise UserError(f"OpenVINO cannot read {xml} ({str(error).splitlines()[0]}); "
                            f"re-run `groupvit-edge export`") from None
        shape = None
        if static_batch:
            preprocess = self.manifest.preprocess
            shape = [1, 3, preprocess.height, preprocess.width]
            model.reshape({"pixels": shape})
        if self.cache_dir is not None:
            location = cache_location(self.cache_dir, _graph_digest(self.manifest.graphs[graph], xml, weights),
                                      self.device, config, shape, self._ov.__version__)
            config = {**config, "CACHE_DIR": str(location)}
        return self._core.compile_model(model, self.device, config)

    def _ran_precision(self, compiled) -> str:
        """What the compiled model computes in, asked of the compiled model itself (not what was requested)."""
        ran = _property(compiled, "INFERENCE_PRECISION_HINT", None)
        if ran is not None:
            return ran.to_string()
        # Virtual devices (AUTO) do not expose it: report what was set on the devices that execute.
        executed = _property(compiled, "EXECUTION_DEVICES", self._physical)
        return "/".join(sorted({self._precisions.get(d.split(".")[0], "?") for d in executed})) + " (set)"

    # ------------------------------------------------------------------------------------------- running

    def encode_images_async(self, windows: Iterable[np.ndarray]) -> Iterator[ImageEncoding]:
        """Encode a stream of windows ([3,H,W] or [1,3,H,W] each) with every infer request busy; yields one
        ImageEncoding (batch 1) per window, in input order, as soon as it and all earlier ones are done."""
        finished: dict[int, dict[str, np.ndarray]] = {}

        names = self._output_names

        def collect(request, index):
            finished[index] = {name: request.get_tensor(name).data.copy() for name in names}

        requests = self._borrow_queue()
        try:
            requests.set_callback(collect)
            emitted = 0
            for index, window in enumerate(windows):
                pixels = np.ascontiguousarray(window, np.float32)
                requests.start_async({"pixels": pixels if pixels.ndim == 4 else pixels[None]}, index)
                while emitted in finished:
                    yield ImageEncoding.from_outputs(finished.pop(emitted))
                    emitted += 1
            requests.wait_all()
            while emitted in finished:
                yield ImageEncoding.from_outputs(finished.pop(emitted))
                emitted += 1
        finally:
            requests.wait_all()
            self._idle_queues.put(requests)

    def _borrow_queue(self):
        if self._image is None:
            raise RuntimeError("the OpenVINO runtime was closed")
        try:
            return self._idle_queues.get_nowait()
        except queue.Empty:
            return self._ov.AsyncInferQueue(self._image, self._requests)

    def encode_image(self, pixels: np.ndarray) -> ImageEncoding:
        return ImageEncoding.concatenate(list(self.encode_images_async(pixels)))

    def encode_text(self, token_ids: np.ndarray) -> np.ndarray:
        with self._text_lock:
            if self._text is None:
                self._text = self._compile("text_ir", self._text_config, static_batch=False)
        dtype = np.dtype(self.manifest.graphs["text_ir"].inputs[0]["dtype"])
        request = self._text.create_infer_request()
        request.infer({"token_ids": np.ascontiguousarray(token_ids, dtype)})
        return request.get_tensor(self.manifest.text_output).data.copy()

    @property
    def infer_requests(self) -> int:
        return self._requests

    @property
    def description(self) -> str:
        if self._image is None:
            return f"openvino {self._ov.__version__.split('-')[0]} (closed)"
        compute = self.manifest.graphs["image_ir"].precision
        executed = ", ".join(_property(self._image, "EXECUTION_DEVICES", [self.device]))
        streams = _property(self._image, "NUM_STREAMS", None)
        streams = "" if streams is None else f" {streams} stream{'' if str(streams) == '1' else 's'}"
        return (f"openvino {self._ov.__version__.split('-')[0]} ({executed}, {compute} IR, inference precision "
                f"{self.inference_precision}, {self.hint}{streams})")

    def close(self) -> None:
        self._idle_queues = queue.SimpleQueue()
        self._image = self._text = None


# ------------------------------------------------------------------------------------------ block probe

def block_probe(manifest: Manifest, outputs, forced, options: Options) -> BlockProbe:
    return BlockProbe(manifest, outputs, forced, options)


class BlockProbe(Probe):
    def __init__(self, manifest: Manifest, outputs, forced, options):
        self._ov = _import()
        self._core = self._ov.Core()
        device = check_device(list(self._core.available_devices), options.device)
        if device.partition(":")[0] in VIRTUAL_DEVICES:
            raise UserError(f"per-block divergence runs on one device, not {device}: choose CPU, GPU or NPU")
        recorded = manifest.graphs["image_ir"].inference_precision or "f32"
        precisions = device_precisions(self._core, [device], recorded,
                                       options.inference_precision)
        precision = precisions[device]
        config = compile_config(device, precisions, "LATENCY", threads=options.threads)
        self._free, self.missing = self._compile(manifest, outputs, (), device, config)
        self._forced: Any = self._compile(manifest, outputs, forced, device, config)[0] if forced else None
        self._names = [tensor for tensor in outputs if tensor not in self.missing]
        record = manifest.graphs["image_ir"]
        self.description = f"{record.file} in openvino {self._ov.__version__.split('-')[0]} ({device}, " \
                           f"{record.precision} IR, inference precision {precision})"

    def _compile(self, manifest: Manifest, outputs, forced, device: str, config: dict):
        model = self._core.read_model(str(manifest.graph_path("image_ir")),
                                      str(manifest.weights_path("image_ir")))
        preprocess = manifest.preprocess
        model.reshape({IMAGE_INPUT: [1, 3, preprocess.height, preprocess.width]})
        ports = {name: output for op in model.get_ops() for output in op.outputs() for name in output.get_names()}
        missing = [tensor for tensor in dict.fromkeys([*outputs, *forced]) if tensor not in ports]
        model.add_outputs([tensor for tensor in outputs if tensor in ports])
        parameters = []
        for tensor in (tensor for tensor in forced if tensor in ports):
            port = ports[tensor]
            parameter = self._ov.opset13.parameter(port.get_partial_shape(), port.get_element_type(),
                                                   name=tensor + REFERENCE_SUFFIX)
            parameter.output(0).set_names({tensor + REFERENCE_SUFFIX})
            for target in list(port.get_target_inputs()):
                if target.get_node().get_type_name() != "Result":     # the exposed output stays the block's own
                    target.replace_source_output(parameter.output(0))
            parameters.append(parameter)
        model.add_parameters(parameters)
        return self._core.compile_model(model, device, config), missing

    def run(self, window: np.ndarray, reference: dict | None = None) -> dict[str, np.ndarray]:
        # Only the forced model has reference inputs, so the free one never reads `reference`.
        compiled, reference = (self._free, {}) if reference is None else (self._forced, reference)
        feeds = {IMAGE_INPUT: np.ascontiguousarray(window[None])}
        for graph_input in compiled.inputs:
            name = graph_input.get_any_name()
            if name != IMAGE_INPUT:
                feeds[name] = np.ascontiguousarray(reference[name.removesuffix(REFERENCE_SUFFIX)], np.float32)
        results = compiled(feeds)
        return {name: np.array(results[name]) for name in self._names}

    def close(self) -> None:
        self._free = self._forced = None
