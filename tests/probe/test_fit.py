"""Probe heads on synthetic features whose answer is known: a label the features carry is found, one
they do not carry stays at chance, and the layer weights sum to one and point at the informative layer."""

from __future__ import annotations

import pytest
import torch

from speechbs.probe.fit import FitConfig, Split, fit_probe

K, L, C = 4, 3, 16


def _split(n: int, generator: torch.Generator, *, informative_layer: int | None, scale: float = 1.5) -> Split:
    labels_N = torch.randint(0, K, (n,), generator=generator)
    feats_NLC = torch.randn(n, L, C, generator=generator)
    if informative_layer is not None:
        centres_KC = torch.randn(K, C, generator=torch.Generator().manual_seed(99)) * scale
        feats_NLC[:, informative_layer] += centres_KC[labels_N]
    return Split(feats_NLC, labels_N)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_a_label_the_features_carry_is_found_and_its_layer_weighted_most(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    train, valid, test = (_split(n, g, informative_layer=1) for n in (600, 200, 400))
    result = fit_probe(train, test, K, FitConfig(kind=kind, epochs=30, lr=3e-3), valid=valid)
    assert result.accuracy > 0.85  # chance is 0.25
    assert sum(result.layer_weights_L) == pytest.approx(1.0, abs=1e-6)
    assert max(range(L), key=lambda i: result.layer_weights_L[i]) == 1
    assert sum(result.total_K) == 400 and all(0 <= c <= t for c, t in zip(result.correct_K, result.total_K))


def test_features_without_the_label_stay_at_chance() -> None:
    g = torch.Generator().manual_seed(1)
    train, valid, test = (_split(n, g, informative_layer=None) for n in (600, 200, 2000))
    result = fit_probe(train, test, K, FitConfig(epochs=30, lr=3e-3), valid=valid)
    assert abs(result.accuracy - 1 / K) < 0.05  # 2000 test examples: the sd of chance accuracy is 0.01


def test_a_single_layer_probe_sees_only_its_layer_and_logreg_reads_the_last() -> None:
    g = torch.Generator().manual_seed(2)
    train, test = _split(600, g, informative_layer=0), _split(600, g, informative_layer=0)
    good = fit_probe(train, test, K, FitConfig(epochs=30, lr=3e-3), layer=0)
    blind = fit_probe(train, test, K, FitConfig(epochs=30, lr=3e-3), layer=2)
    assert good.accuracy > 0.85 and blind.accuracy < 0.4
    assert good.layer_weights_L == [1.0, 0.0, 0.0]
    logreg = fit_probe(train, test, K, FitConfig(kind="logreg", epochs=30, lr=3e-3))
    assert logreg.layer_weights_L == [0.0, 0.0, 1.0] and logreg.accuracy < 0.4


def test_the_same_seed_gives_the_same_probe() -> None:
    g = torch.Generator().manual_seed(3)
    train, valid, test = (_split(n, g, informative_layer=2, scale=0.5) for n in (300, 100, 300))
    runs = [fit_probe(train, test, K, FitConfig(epochs=5, seed=7), valid=valid) for _ in range(2)]
    assert runs[0].accuracy == runs[1].accuracy and runs[0].layer_weights_L == runs[1].layer_weights_L
