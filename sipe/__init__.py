"""SIPE: self-supervised image-specific prototype exploration for weakly supervised segmentation."""

__version__ = "0.1.0"
