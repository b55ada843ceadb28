"""Backbones and the SIPE network."""
from .backbones import BACKBONES, Backbone, BackboneSpec, WeightsError, build_backbone
from .sipe_net import Features, SIPENet, build_model

__all__ = ["BACKBONES", "Backbone", "BackboneSpec", "WeightsError", "build_backbone", "Features", "SIPENet", "build_model"]
