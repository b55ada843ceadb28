"""Baselines trained beside SIPE: SC-CAM."""
