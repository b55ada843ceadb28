"""Infrastructure: settings, errors, run-time helpers, locks, torchrun, provenance."""
