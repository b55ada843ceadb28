"""The method: the backbone registry, the network, IPE (seeds, prototypes, IS-CAM), the losses, CAMs."""
