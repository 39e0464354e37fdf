"""speechbs: self-supervised speech pretraining where the batch is seconds of audio per step."""

__version__ = "0.1.0"
