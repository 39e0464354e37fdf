"""``speechbs probe CHECKPOINT --task NAME --label EXT --train M --test M [--valid M] --out DIR``.

A frozen-feature probe of an encoder (SUPERB's recipe): every layer's features of the three
manifests are computed once and cached (:mod:`speechbs.probe.features`); a head learns a
softmax-weighted sum over the layers plus a linear (or MLP) classifier on the training set,
keeps the epoch with the best validation accuracy, and is scored on the test set. One linear
probe per single layer finds the best layer. Labels come from the label file beside each
manifest named by ``--label`` (``train.tsv`` + ``spk`` -> ``train.spk``): one label per line in
manifest order for utterance-level tasks, one space-separated label per encoder frame for
frame-level ones. Writes ``probe.json`` and ``layer_weights.png``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from speechbs.atomic import write_text
from speechbs.data.manifest import label_path, read_manifest
from speechbs.errors import ConfigError, DataError
from speechbs.probe.features import FeatureCache, LayerFeatures, Level
from speechbs.probe.fit import FitConfig, Split, fit_probe
from speechbs.textio import read_lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="pretraining or fine-tuned checkpoint, or a run directory")
    parser.add_argument("--task", required=True, help="a short name for what is probed (e.g. speaker, keyword)")
    parser.add_argument("--label", required=True, metavar="EXT",
                        help="label file extension: train.tsv + spk reads train.spk (one label per line)")
    parser.add_argument("--train", required=True, help="training manifest (.tsv)")
    parser.add_argument("--test", required=True, help="test manifest (.tsv)")
    parser.add_argument("--valid", default="", help="validation manifest (.tsv): selects the epoch")
    parser.add_argument("--label-dir", default="", help="directory of the label files (default: beside each manifest)")
    parser.add_argument("--level", default="utterance", choices=["utterance", "frame"],
                        help="utterance: one label per utterance, mean-pooled features; frame: one label per frame")
    parser.add_argument("--head", default="linear", choices=["linear", "mlp", "logreg"],
                        help="linear or mlp on the weighted sum of all layers; logreg: linear on the last layer "
                             "(the classifier-on-latents baseline)")
    parser.add_argument("--random-init", action="store_true",
                        help="probe the checkpoint's architecture at the weights its pretraining run started from "
                             "(the baseline that shows what pretraining added)")
    parser.add_argument("--epochs", type=int, default=50, help="passes over the training set")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the heads and of the example order")
    parser.add_argument("--out", required=True, help="output directory for probe.json and layer_weights.png")
    parser.add_argument("--cache", default="", help="feature cache directory (default: OUT/../cache)")
    parser.add_argument("--workers", type=int, default=1, help="audio decoding worker processes")


def main(args: argparse.Namespace) -> int:
    if args.epochs < 1:
        raise ConfigError(f"--epochs {args.epochs}: must be >= 1")
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out.parent / "cache"
    level: Level = args.level
    manifests = {"train": args.train, "test": args.test, **({"valid": args.valid} if args.valid else {})}
    labels = {name: read_labels(path, args.label, args.label_dir) for name, path in manifests.items()}
    encoder = FeatureCache(args.checkpoint, level, cache, num_workers=args.workers, random_init=args.random_init)
    features = {name: encoder.features(path) for name, path in manifests.items()}
    classes = sorted(set(_flat(labels["train"], level)))
    splits = {name: to_split(features[name], labels[name], classes, level,
                             label_path(manifests[name], args.label, args.label_dir)) for name in manifests}
    cfg = FitConfig(kind=args.head, epochs=args.epochs, lr=args.lr, seed=args.seed)
    result = fit_probe(splits["train"], splits["test"], len(classes), cfg, valid=splits.get("valid"))
    num_layers = features["train"].num_layers
    single = FitConfig(kind="linear", epochs=args.epochs, lr=args.lr, seed=args.seed)
    per_layer = [fit_probe(splits["train"], splits["test"], len(classes), single, valid=splits.get("valid"),
                           layer=layer).accuracy for layer in range(num_layers)]
    record = probe_record(args, classes, splits, result, per_layer, features)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "probe.json", json.dumps(record, indent=2) + "\n")
    try:
        from speechbs.report.plots import write_probe_plot

        write_probe_plot(record, out / "layer_weights.png")
    except ImportError:
        print("note: matplotlib is not installed; no layer_weights.png (pip install 'speechbs[report]')")
    print(f"{args.task}: test accuracy {100 * record['accuracy']:.1f}% over {record['num_test']} "
          f"{'frames' if level == 'frame' else 'utterances'} ({len(classes)} classes, chance "
          f"{100 * record['chance_accuracy']:.1f}%); best single layer {record['best_single_layer']['layer']} "
          f"({100 * record['best_single_layer']['accuracy']:.1f}%); wrote {out / 'probe.json'}")
    return 0


def read_labels(manifest_path: str, ext: str, label_dir: str = "") -> list[str]:
    """One label line per manifest row, from the label file beside the manifest (or in ``label_dir``)."""
    rows = len(read_manifest(manifest_path))  # a missing manifest is named as such, before its labels
    path = label_path(manifest_path, ext, label_dir)
    if not path.is_file():
        raise DataError(f"label file {path} does not exist: a probe needs one label per line of {manifest_path} "
                        f"(`speechbs manifest` writes label files; --label names the extension)")
    lines = [line.strip() for line in read_lines(path, "label file")]
    if len(lines) != rows:
        raise DataError(f"{path} has {len(lines)} lines but {manifest_path} has {rows} utterances; "
                        f"one label line per manifest row, in manifest order")
    empty = [i + 1 for i, line in enumerate(lines) if not line]
    if empty:
        raise DataError(f"{path}: line {empty[0]} is empty ({len(empty)} empty lines); every utterance needs a label")
    return lines


def _flat(rows: list[str], level: Level) -> list[str]:
    return rows if level == "utterance" else [label for line in rows for label in line.split()]


def to_split(features: LayerFeatures, rows: list[str], classes: list[str], level: Level, labels_file: Path) -> Split:
    """Features and class indices of one split; a label the training set never had is refused."""
    index = {label: i for i, label in enumerate(classes)}
    unknown = sorted(set(_flat(rows, level)) - set(index))
    if unknown:
        raise DataError(f"{labels_file} has labels the training set does not: "
                        f"{', '.join(unknown[:5])}; a probe can only predict classes it was trained on")
    if level == "utterance":
        return Split(torch.stack(features.per_row).float(), torch.tensor([index[r] for r in rows]))
    feats, labels = [], []
    for row, (feats_TLC, line) in enumerate(zip(features.per_row, rows)):
        frame_labels = line.split()
        if len(frame_labels) != len(feats_TLC):
            raise DataError(f"{labels_file} line {row + 1}: {len(frame_labels)} frame labels "
                            f"for {len(feats_TLC)} encoder frames; frame-level labels must be one per frame")
        feats.append(feats_TLC.float())
        labels += [index[label] for label in frame_labels]
    return Split(torch.cat(feats), torch.tensor(labels))


def probe_record(args: argparse.Namespace, classes: list[str], splits: dict[str, Split], result: Any,
                 per_layer: list[float], features: dict[str, LayerFeatures]) -> dict[str, Any]:
    train_counts = Counter(splits["train"].labels_N.tolist())
    majority = max(train_counts, key=lambda k: (train_counts[k], -k))
    test_labels = splits["test"].labels_N
    best_layer = max(range(len(per_layer)), key=lambda i: (per_layer[i], -i))
    return {
        "task": args.task, "checkpoint": str(args.checkpoint), "label": args.label, "level": args.level,
        "head": args.head, "epochs": args.epochs, "seed": args.seed, "random_init": args.random_init,
        "classes": classes, "num_classes": len(classes),
        "num_train": len(splits["train"].labels_N), "num_test": len(test_labels),
        "num_valid": len(splits["valid"].labels_N) if "valid" in splits else 0,
        "accuracy": result.accuracy, "error_rate": 1.0 - result.accuracy,
        "chance_accuracy": float((test_labels == majority).float().mean()),
        "uniform_chance": 1.0 / len(classes),
        "valid_accuracy": result.valid_accuracy, "best_epoch": result.best_epoch,
        "per_class": {c: {"correct": result.correct_K[i], "total": result.total_K[i]} for i, c in enumerate(classes)},
        "layer_weights": result.layer_weights_L,
        "per_layer_accuracy": per_layer,
        "best_single_layer": {"layer": best_layer, "accuracy": per_layer[best_layer]},
        "layers": "0 = projected conv features (the transformer's input), 1..L = transformer layer outputs",
        "features_from_cache": {name: f.from_cache for name, f in features.items()},
    }
