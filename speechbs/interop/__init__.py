"""Models in and out of other toolkits (docs/interop.md).

``hf.py``: Hugging Face transformers directories (``speechbs export --to hf``); the pure name and
config mapping lives in :mod:`speechbs.models.convert`. ``fairseq.py`` / ``fairseq_read.py``:
fairseq checkpoints written and read (and the WavLM repository's), with ``fairseq_map.py`` their
names and configs both ways and ``pickles.py`` the reader of foreign pickles that runs no code of
theirs. ``s3prl.py``: the files s3prl's local upstreams load. This package does the file I/O around
the mappings, which models/ may not.
"""
