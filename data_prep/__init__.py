"""Scripts that build a VOC 2012 + SBD data root (or a synthetic one) and check it; see README.md."""
