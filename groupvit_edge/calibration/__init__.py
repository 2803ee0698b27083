"""COCO calibration for INT8: the image set, the precision policy, the quantizers and their cache."""
from .dataset import CalibrationSet

__all__ = ["CalibrationSet"]
