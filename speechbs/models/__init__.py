"""Model architectures only: no optimizers, logging or distributed code."""
