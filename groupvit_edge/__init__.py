"""groupvit-edge: GroupViT zero-shot segmentation on ONNX Runtime, OpenVINO and TensorRT, with drift proofs.

Importing this package needs only numpy and Pillow: torch is needed to export, not to run.
"""
__version__ = "0.1.0"

from .errors import UserError  # noqa: E402
from .segmentation.segmenter import Segmentation, Segmenter  # noqa: E402

__all__ = ["Segmenter", "Segmentation", "UserError", "__version__"]
