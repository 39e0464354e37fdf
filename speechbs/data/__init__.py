"""Data: manifests, audio loading and validation, the batch planner, the built-in corpus."""
