"""The one small interface every backend implements (Polygraphy's runner, narrowed to GroupViT's two graphs)."""
from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..artifact import Manifest


def importable(module: str) -> bool:
    """Whether a backend's package imports here; a broken install (a CUDA library missing) counts as absent."""
    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True


@dataclass(frozen=True)
class Configuration:
    """One way to run an artifact on this machine: a backend and the runtime options that select a precision."""
    backend: str
    options: dict
    label: str                 # e.g. "openvino, int8 IR, bf16"


# The image graph's outputs, the artifact's contract with every runtime. `stage1_grouping` is optional:
# artifacts whose graph lacks it still run.
IMAGE_OUTPUTS = ("group_embeds", "image_embed", "grouping")
OPTIONAL_IMAGE_OUTPUTS = ("stage1_grouping",)


@dataclass
class ImageEncoding:
    """Outputs of the image graph for a batch of windows, by the names every artifact's image graph gives them."""
    group_embeds: np.ndarray   # [B, G, D] float32, L2-normalised
    image_embed: np.ndarray    # [B, D] float32, L2-normalised
    grouping: np.ndarray       # [B, G, H/p, W/p] float32, soft maps multiplied over stages
    stage1_grouping: np.ndarray | None = None   # [B, G1, H/p, W/p]: the first stage's soft groups (64 for gcc-yfcc)

    @classmethod
    def from_outputs(cls, outputs: dict) -> ImageEncoding:
        """From a backend's outputs by name; an optional output the graph lacks stays None."""
        return cls(*(outputs[name] for name in IMAGE_OUTPUTS),
                   **{name: outputs[name] for name in OPTIONAL_IMAGE_OUTPUTS if name in outputs})

    @classmethod
    def concatenate(cls, parts: list[ImageEncoding]) -> ImageEncoding:
        """Batches of windows encoded separately, joined in order."""
        def joined(name):
            arrays = [getattr(part, name) for part in parts]
            return None if any(a is None for a in arrays) else np.concatenate(arrays)
        return cls(*(joined(name) for name in IMAGE_OUTPUTS + OPTIONAL_IMAGE_OUTPUTS))


class Runtime(abc.ABC):
    """Runs the image and text graphs of one artifact (or the PyTorch reference) on numpy arrays."""

    name: str = "?"            # backend name, e.g. "onnxruntime"
    manifest: Manifest

    @abc.abstractmethod
    def encode_image(self, pixels: np.ndarray) -> ImageEncoding:
        """pixels [B, 3, H, W] float32 at the manifest's size, normalised."""

    @abc.abstractmethod
    def encode_text(self, token_ids: np.ndarray) -> np.ndarray:
        """token_ids [K, 77] integer → the text graph's features [K, D] float32: the projection before
        normalisation, or already L2-normalised where `manifest.text_output_normalised` (earlier artifacts)."""

    @property
    def description(self) -> str:
        """Backend, version and what actually runs (device, precision), for reports and `bench`."""
        return self.name

    def close(self) -> None:
        """Release sessions and device memory; the runtime is unusable afterwards."""
        return None  # a runtime holding nothing releasable has nothing to do

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RuntimeBackend(Protocol):
    """One module per backend (runtimes.backends lists them; mypy checks each against this). Every backend module
    imports without its package, so asking any of them is safe on any machine."""

    @property
    def NAME(self) -> str: ...  # noqa: N802 - module constants
    @property
    def EXTRA(self) -> str: ...  # noqa: N802 - the pip extra that installs it
    @property
    def Options(self) -> type: ...  # noqa: N802 - a dataclass of its runtime options (options.option fields)

    def is_installed(self) -> bool: ...

    def install_hint(self) -> str: ...

    def devices(self) -> list[str]:
        """What this machine offers it (providers, devices, GPUs); called only when installed."""

    def unsupported_reason(self, manifest: Manifest) -> str | None: ...

    def open_runtime(self, target: Any, options: Any) -> Runtime:
        """`target`: the manifest (an artifact backend) or the model spec (the reference)."""

    def configurations(self, manifest: Manifest) -> list[Configuration]:
        """The ways it can run this artifact here, one per precision it selects, for `tune`."""


@runtime_checkable
class ThroughputBackend(Protocol):
    """A backend with a throughput mode: its options for `streams` windows in flight at once."""

    def throughput_options(self, streams) -> dict: ...
