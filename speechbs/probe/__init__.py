"""Frozen-feature probes: what an encoder's layers know beyond ASR (SUPERB-style).

The encoder is frozen and run once per utterance (:mod:`speechbs.probe.features`, cached on
disk); a small head learns a softmax-weighted sum over every layer plus a linear or MLP
classifier (:mod:`speechbs.probe.heads`, :mod:`speechbs.probe.fit`). ``speechbs probe`` is the
command (:mod:`speechbs.probe.command`); docs/probes.md says what each score means.
"""
