"""Models in and out of other toolkits: writing speechbs checkpoints in their formats (docs/interop.md).

``hf.py``: Hugging Face transformers directories (``speechbs export --to hf``). The pure
name and config mapping lives in :mod:`speechbs.models.convert`; this package does the
file I/O around it, which models/ may not.
"""
