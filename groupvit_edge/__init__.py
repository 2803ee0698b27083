"""groupvit-edge: GroupViT zero-shot segmentation on ONNX Runtime, OpenVINO and TensorRT, with drift proofs.

Importing this package needs only numpy and Pillow: torch is needed to export, not to run.
"""
__version__ = "0.1.0"

from .errors import UserError  # noqa: E402


def __getattr__(name):
    # Lazy so that `import groupvit_edge` stays cheap and torch-free.
    if name in ("Segmenter", "Segmentation"):
        from .segmentation import segmenter
        return getattr(segmenter, name)
    raise AttributeError(f"module 'groupvit_edge' has no attribute {name!r}")


__all__ = ["Segmenter", "Segmentation", "UserError", "__version__"]
