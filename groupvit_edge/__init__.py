"""groupvit-edge: GroupViT zero-shot segmentation on ONNX Runtime, OpenVINO and TensorRT, with drift proofs.

Importing this package needs only numpy and Pillow: torch is needed to export, not to run.
"""
from .errors import UserError
from .segmentation.segmenter import Segmentation, Segmenter
from .version import __version__

__all__ = ["Segmenter", "Segmentation", "UserError", "__version__"]
