"""From maps to a segmentation model: IRN refinement and the segmentation network."""
