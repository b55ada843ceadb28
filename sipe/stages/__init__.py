"""The pipeline stages: training, maps, evaluation, denseCRF, checkpoints, label sources."""
