"""Pre-processing, the paper's post-processing and stitching: numpy, one implementation for all backends."""
from .segmenter import Segmentation, Segmenter
from .vocabulary import Vocabulary, parse_labels

__all__ = ["Segmentation", "Segmenter", "Vocabulary", "parse_labels"]
