"""Confusion matrices → IoU, and the harnesses built on them: drift, evaluation, benchmarks."""
from .confusion import ConfusionMatrix

__all__ = ["ConfusionMatrix"]
