"""PyTorch reference backend: the model itself, from a checkpoint, through the same interface as artifacts."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..artifact import Manifest, Preprocess, new_manifest_data
from ..errors import UserError
from ..imports import require
from .base import ImageEncoding, Runtime, importable

NAME = "torch"
EXTRA = "export"


def is_installed() -> bool:
    return importable("torch")


def install_hint() -> str:
    # The CPU wheel first: a bare `torch` requirement resolves to a multi-GB CUDA build.
    return f"pip install torch==2.13.0 groupvit-edge[{EXTRA}]"


def _torch():
    return require("torch", EXTRA, what="the PyTorch reference", otherwise=" (install the CPU wheel first: pip install "
                   "torch==2.13.0)")


def devices() -> list[str]:
    torch = _torch()
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def unsupported_reason(manifest: Manifest) -> str | None:
    return "the PyTorch reference runs checkpoints, not exported artifacts"


@dataclass(frozen=True)
class Options:
    image_size: tuple[int, int] | int = (448, 448)
    threads: int | None = None
    resize: str = "slide"


def open_runtime(source, options: Options) -> TorchRuntime:
    if not is_installed():
        raise UserError(f"torch is not installed: the PyTorch reference needs it ({install_hint()}); run an "
                        f"exported artifact instead")
    from ..model.loading import LoadedModel, load_model
    loaded = source if isinstance(source, LoadedModel) else load_model(str(source))
    return TorchRuntime(loaded, image_size=options.image_size, threads=options.threads, resize=options.resize)


def configurations(manifest: Manifest) -> list:
    """The reference is not a deployment choice."""
    return []


def reference_manifest(loaded, preprocess: Preprocess) -> Manifest:
    """What an fp32 export of this model would describe, minus graphs: the reference speaks the same terms."""
    model = loaded.model
    config = model.config
    data = new_manifest_data(
        model_id=loaded.model_id, weights_sha256=loaded.weights_sha256, config=config.to_hf_dict(),
        preprocess=preprocess, patch_size=config.vision.patch_size,
        logit_scale=float(model.logit_scale.detach().exp()), num_groups=config.num_final_groups,
        embed_dim=config.projection_dim)
    if loaded.tokenizer_dir is not None:
        data["tokenizer"] = {"dir": str(loaded.tokenizer_dir.resolve())}
    return Manifest(data, directory=None)


def check_image_size(height: int, width: int, patch_size: int) -> None:
    if height % patch_size or width % patch_size or height <= 0 or width <= 0:
        raise UserError(f"image size {height}x{width} is not a multiple of the patch size {patch_size}: "
                        f"use e.g. 448 or 224")


class TorchRuntime(Runtime):
    name = NAME

    def __init__(self, loaded, image_size=(448, 448), threads: int | None = None, resize: str = "slide"):
        torch = _torch()
        from ..model.graphs import ImageGraph, TextGraph
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        check_image_size(height, width, loaded.model.config.vision.patch_size)
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.loaded = loaded
        self.manifest = reference_manifest(loaded, Preprocess(height=height, width=width, resize=resize))
        self.image_graph = ImageGraph(loaded.model, height, width).eval()   # the modules the exporters trace
        self.text_graph = TextGraph(loaded.model).eval()

    def encode_image(self, pixels: np.ndarray) -> ImageEncoding:
        with self._torch.inference_mode():
            outputs = self.image_graph(self._torch.from_numpy(np.ascontiguousarray(pixels, np.float32)))
        return ImageEncoding(*(tensor.numpy() for tensor in outputs))   # in IMAGE_OUTPUTS + optional order

    def encode_text(self, token_ids: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.text_graph(self._torch.from_numpy(np.asarray(token_ids, np.int32))).numpy()

    @property
    def description(self) -> str:
        return f"torch {self._torch.__version__} (eager, fp32, {self._torch.get_num_threads()} threads)"
