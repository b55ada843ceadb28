"""Data files shipped with the package: `paper_results.csv`, the paper's numbers (read by `sipe.study.paper`)."""
