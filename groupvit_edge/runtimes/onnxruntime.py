"""ONNX Runtime backend: runs image.onnx / text.onnx of an artifact, CPU by default, providers selectable.

A static INT8 graph is written with symmetric signed activations (S8), the form TensorRT requires. ONNX Runtime's
x86 CPU kernels fuse only some S8 activation × S8 weight products into integer kernels and run the rest as
DequantizeLinear + float MatMul; with unsigned activations (U8 × S8) they fuse them all. The same grid shifted by 128
(zero point 128, uint8) quantizes every value to the same level, so on x86 the runtime runs that U8 form of the
graph (`--int8-activations`, chosen per device by `tune`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..artifact import Manifest
from ..errors import UserError
from ..imports import require
from ..options import option
from ..quantization.form import activation_label, default_activation_form, unsigned_activations
from .base import IMAGE_OUTPUTS, OPTIONAL_IMAGE_OUTPUTS, Configuration, ImageEncoding, Runtime, importable
from .probes import IMAGE_INPUT, REFERENCE_SUFFIX, Probe, image_graph, probe_graph

NAME = "onnxruntime"
EXTRA = "onnxruntime"
STATIC_INT8 = "int8"           # the QDQ graph's precision in the manifest (int8-dynamic quantizes at run time)
ACTIVATION_FORMS = ("auto", "u8", "s8")


def is_installed() -> bool:
    return importable("onnxruntime")


def install_hint() -> str:
    return f"pip install groupvit-edge[{EXTRA}]"


def devices() -> list[str]:
    """The execution providers this onnxruntime build offers."""
    return list(_import().get_available_providers())


def unsupported_reason(manifest: Manifest) -> str | None:
    formats = {name: graph.format for name, graph in manifest.graphs.items()}
    if formats.get("image") != "onnx":
        return "the artifact has no ONNX image graph"
    return None


def _import():
    return require("onnxruntime", EXTRA)


def _import_onnx():
    return require("onnx", EXTRA, what="running an INT8 graph with U8 activations",
                   otherwise=" or pass --int8-activations s8")


@dataclass(frozen=True)
class Options:
    providers: tuple[str, ...] | None = option(None, "onnxruntime: execution providers in order of preference "
                                               "(repeatable; default CPUExecutionProvider).", multiple=True)
    threads: int | None = option(None, "CPU threads (default: one per core).", minimum=1)
    int8_activations: str = option("auto", "onnxruntime: activations of a static INT8 graph — u8 (the same "
                                           "levels as unsigned, which x86 integer kernels take), s8 (as written) "
                                           "or auto (u8 on x86, s8 elsewhere).", choices=ACTIVATION_FORMS)


def configurations(manifest: Manifest) -> list[Configuration]:
    """ONNX Runtime runs the artifact's ONNX image graph in the precision the graph has; a static INT8 graph in
    either activation form."""
    if unsupported_reason(manifest) is not None or not is_installed():
        return []
    precision = manifest.graphs["image"].precision
    if precision != STATIC_INT8:
        return [Configuration(NAME, {}, f"onnxruntime, {precision} ONNX")]
    return [Configuration(NAME, {"int8_activations": form}, f"onnxruntime, {precision} ONNX{activation_label(form)}")
            for form in ("s8", "u8")]


def open_runtime(manifest: Manifest, options: Options) -> OnnxRuntime:
    return OnnxRuntime(manifest, providers=options.providers, threads=options.threads,
                       int8_activations=options.int8_activations)


def activation_form(manifest: Manifest, asked: str) -> str | None:
    """The activation form a static INT8 image graph runs in ("s8" or "u8"); None for any other graph."""
    if manifest.graphs["image"].precision != STATIC_INT8:
        return None
    return default_activation_form() if asked == "auto" else asked


def _session_options(ort, threads: int | None):
    """Every session of this backend: all graph optimizations, `threads` CPU threads (default: one per core)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3     # errors only: warnings would break one-line CLI output
    if threads:
        options.intra_op_num_threads = threads
    return options


def load_advice(error: str, providers: list[str]) -> str:
    """The fix for a session that did not load: the checksums were verified on open, so a damaged file is rare;
    a newer opset or an execution provider that cannot start are the usual causes."""
    lowered = error.lower()
    if "opset" in lowered or "not implemented" in lowered or "unsupported" in lowered:
        return "upgrade onnxruntime (`pip install -U onnxruntime`), or re-export with the onnxruntime you deploy"
    accelerated = [provider for provider in providers if provider != "CPUExecutionProvider"]
    if accelerated and any(word in lowered for word in ("cuda", "cudnn", "cublas", "tensorrt", "provider")):
        return (f"{accelerated[0]} could not start here: check that its CUDA/driver libraries match the "
                f"onnxruntime build, or run with providers=['CPUExecutionProvider']")
    return "re-run `groupvit-edge export` to rebuild the artifact"


class OnnxRuntime(Runtime):
    name = NAME

    def __init__(self, manifest: Manifest, providers=None, threads: int | None = None,
                 int8_activations: str = "auto"):
        ort = _import()
        self.manifest = manifest
        self.int8_activations = activation_form(manifest, int8_activations)
        self._options = _session_options(ort, threads)
        available = ort.get_available_providers()
        self.providers = list(providers or ["CPUExecutionProvider"])
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise UserError(f"ONNX Runtime provider {missing[0]} is not available here (available: "
                            f"{', '.join(available)}): choose one of those")
        self._ort = ort
        self._image = self._session("image")
        wanted = IMAGE_OUTPUTS + OPTIONAL_IMAGE_OUTPUTS
        self._image_outputs = [o.name for o in self._image.get_outputs() if o.name in wanted]
        self._text: Any = None    # built on first use: a precomputed vocabulary never needs it

    def _session(self, graph: str):
        path = self.manifest.graph_path(graph)
        source = str(path)
        if graph == "image" and self.int8_activations == "u8":
            source = unsigned_activations(_import_onnx().load(source)).SerializeToString()
        try:
            return self._ort.InferenceSession(source, self._options, providers=self.providers)
        except Exception as error:  # ORT raises its own Fail/InvalidGraph types
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UserError(f"ONNX Runtime {self._ort.__version__} cannot load {path} ({first_line}): "
                            f"{load_advice(first_line, self.providers)}") from None

    def encode_image(self, pixels: np.ndarray) -> ImageEncoding:
        outputs = self._image.run(self._image_outputs, {"pixels": np.ascontiguousarray(pixels, np.float32)})
        return ImageEncoding.from_outputs(dict(zip(self._image_outputs, outputs)))

    def encode_text(self, token_ids: np.ndarray) -> np.ndarray:
        if self._text is None:
            self._text = self._session("text")
        dtype = np.dtype(self.manifest.graphs["text"].inputs[0]["dtype"])
        (features,) = self._text.run([self.manifest.text_output],
                                     {"token_ids": np.ascontiguousarray(token_ids, dtype)})
        return features

    @property
    def description(self) -> str:
        precision = self.manifest.graphs["image"].precision
        return f"onnxruntime {self._ort.__version__} ({', '.join(self.providers)}, " \
               f"{precision} ONNX{activation_label(self.int8_activations)})"

    def close(self) -> None:
        self._image = self._text = None


# ------------------------------------------------------------------------------------------ block probe

def block_probe(manifest: Manifest, outputs, forced, options: Options) -> BlockProbe:
    return BlockProbe(manifest, outputs, forced, options)


class BlockProbe(Probe):
    def __init__(self, manifest: Manifest, outputs, forced, options):
        self._ort = _import()
        self._options, self._providers = options, list(options.providers or ["CPUExecutionProvider"])
        self._free, self.missing = self._session(manifest, outputs)
        self._forced: Any
        self._forced, _ = self._session(manifest, outputs, forced) if forced else (None, [])
        compute = manifest.precision.compute
        self.description = f"{manifest.graphs['image'].file} in onnxruntime {self._ort.__version__} " \
                           f"({self._providers[0]}, {compute})"

    def _session(self, manifest: Manifest, outputs, forced=()):
        model = image_graph(manifest, with_weights=True)
        missing = probe_graph(model, outputs, forced)
        if activation_form(manifest, self._options.int8_activations) == "u8":
            model = unsigned_activations(model)
        settings = _session_options(self._ort, self._options.threads)
        return self._ort.InferenceSession(model.SerializeToString(), settings, providers=self._providers), missing

    def run(self, window: np.ndarray, reference: dict | None = None) -> dict[str, np.ndarray]:
        # Only the forced session has reference inputs, so the free one never reads `reference`.
        session, reference = (self._free, {}) if reference is None else (self._forced, reference)
        feeds = {}
        for graph_input in session.get_inputs():
            if graph_input.name == IMAGE_INPUT:
                feeds[IMAGE_INPUT] = window[None]
            else:
                value = reference[graph_input.name.removesuffix(REFERENCE_SUFFIX)]
                feeds[graph_input.name] = value.astype(_ORT_TYPES.get(graph_input.type, value.dtype))
        return dict(zip([output.name for output in session.get_outputs()], session.run(None, feeds)))

    def close(self) -> None:
        self._free = self._forced = None


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
