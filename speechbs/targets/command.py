"""``speechbs targets``: k-means targets for HuBERT/WavLM, one model per iteration for every split.

    speechbs targets fit --manifest train.tsv --features mfcc --k 100 --out it1/kmeans.pt
    speechbs targets label --kmeans it1/kmeans.pt --manifest train.tsv --manifest valid.tsv --ext km
    speechbs targets fit --manifest train.tsv --features layer --checkpoint runs/hubert-it1 --layer 6 \\
        --k 500 --out it2/kmeans.pt

``fit`` visits a seeded random set of utterances, keeps a seeded fraction of
their frames (at most ``--max-frames``) and clusters them; ``label`` streams
every utterance of each manifest through the same features and writes
``<manifest>.<ext>`` plus its ``.json`` sidecar (see speechbs/targets/labels.py).
Fitting on train and labelling valid with the same model matters: a separate
k-means for valid makes its labels meaningless (fairseq issue #5453).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from speechbs.data.manifest import label_path, read_manifest
from speechbs.dist import device_from_name
from speechbs.errors import SpeechbsError
from speechbs.targets import features as feats
from speechbs.targets.kmeans import BACKENDS, FrameSampler, KMeansModel, KMeansSettings, choose_rows, fit
from speechbs.targets.labels import ClusterLabelWriter, LabelMeta, manifest_hash


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fit_p = sub.add_parser("fit", help="fit k-means on a sample of a manifest's frames")
    fit_p.add_argument("--manifest", required=True, help="fairseq .tsv to sample frames from (usually train)")
    fit_p.add_argument("--features", choices=("mfcc", "layer"), default="mfcc",
                       help="39-d MFCC at 100 Hz (iteration 1) or a transformer layer of --checkpoint")
    fit_p.add_argument("--checkpoint", default="", help="speechbs checkpoint file or run dir (--features layer)")
    fit_p.add_argument("--layer", type=int, default=6, help="1-based transformer layer (HuBERT: 6 for iteration 2)")
    fit_p.add_argument("--k", type=int, default=100, help="clusters (HuBERT: 100 on MFCC, 500 on layer 6)")
    fit_p.add_argument("--max-frames", type=int, default=1_000_000, help="frames to fit on, at most")
    fit_p.add_argument("--frame-fraction", type=float, default=0.1,
                       help="fraction of each visited utterance's frames kept")
    fit_p.add_argument("--backend", choices=BACKENDS, default="faiss",
                       help="faiss (fast) or sklearn (fairseq's MiniBatchKMeans settings)")
    fit_p.add_argument("--iterations", type=int, default=20, help="faiss Lloyd iterations")
    fit_p.add_argument("--restarts", type=int, default=1, help="faiss restarts; the best is kept")
    fit_p.add_argument("--sklearn-n-init", type=int, default=20, help="sklearn restarts (fairseq: 20)")
    fit_p.add_argument("--threads", type=int, default=0, help="k-means threads (0: all cores; 1 on a shared machine)")
    fit_p.add_argument("--seed", type=int, default=0)
    fit_p.add_argument("--out", required=True, help="k-means model file to write, e.g. it1/kmeans.pt")
    _add_stream_arguments(fit_p)
    label_p = sub.add_parser("label", help="write cluster labels for one or more manifests")
    label_p.add_argument("--kmeans", required=True, help="model written by `speechbs targets fit`")
    label_p.add_argument("--manifest", action="append", required=True, help="a .tsv to label (repeatable)")
    label_p.add_argument("--ext", default="km", help="label file extension (data.labels in a recipe)")
    label_p.add_argument("--label-dir", default="", help="write label files here instead of beside each manifest")
    label_p.add_argument("--checkpoint", default="", help="where the fitted checkpoint is now, if it moved")
    _add_stream_arguments(label_p)


def _add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when present)")
    parser.add_argument("--batch-seconds", type=float, default=60.0, help="audio per extractor call, s")
    parser.add_argument("--num-workers", type=int, default=2, help="audio decoding processes")


def main(args: argparse.Namespace) -> int:
    return run_fit(args) if args.action == "fit" else run_label(args)


def run_fit(args: argparse.Namespace) -> int:
    settings = KMeansSettings(num_clusters=args.k, backend=args.backend, seed=args.seed, max_frames=args.max_frames,
                              frame_fraction=args.frame_fraction, num_iterations=args.iterations,
                              sklearn_n_init=args.sklearn_n_init, num_restarts=args.restarts,
                              num_threads=args.threads)
    manifest = read_manifest(args.manifest)
    if len(manifest) == 0:
        raise SpeechbsError(f"manifest {args.manifest} has no utterances")
    device = device_from_name(args.device)
    if args.features == "layer":
        if not args.checkpoint:
            raise SpeechbsError("--features layer needs --checkpoint (a speechbs checkpoint file or run directory)")
        extractor = feats.layer_extractor(args.checkpoint, args.layer, device)
    else:
        extractor = feats.mfcc_extractor(16_000, device)
    spec = extractor.spec
    seconds_R = manifest.seconds(spec.sample_rate_hz)
    rows = choose_rows(seconds_R * spec.frame_rate_hz, settings)
    print(f"fit: {spec.description}; visiting {len(rows)} of {len(manifest)} utterances "
          f"({seconds_R[rows].sum() / 3600:.2f} h), keeping {settings.frame_fraction:g} of their frames")
    sampler = FrameSampler(settings)
    progress = feats.Progress(float(seconds_R[rows].sum()), "features")
    for row, feats_TC in feats.iter_features(manifest, extractor, rows=rows, batch_seconds=args.batch_seconds,
                                             num_workers=args.num_workers, progress=progress):
        sampler.add(row, feats_TC)
    start = time.monotonic()
    model = fit(sampler.frames(), settings, spec.to_dict())
    path = model.save(args.out)
    print(f"fit: {settings.backend} k-means, K = {model.num_clusters}, {model.num_train_frames} frames x "
          f"{spec.dim} dims in {time.monotonic() - start:.1f} s, inertia/frame {model.inertia_per_frame:.4g}; "
          f"wrote {path} (hash {model.hash[:10]})")
    return 0


def run_label(args: argparse.Namespace) -> int:
    model = KMeansModel.load(args.kmeans)
    manifests = [(Path(p), read_manifest(p)) for p in args.manifest]
    extractor = feats.extractor_from_spec(model.features, device_from_name(args.device), args.checkpoint or None)
    spec = extractor.spec
    for manifest_path, manifest in manifests:
        out = label_path(manifest_path, args.ext, args.label_dir)
        meta = LabelMeta(label_rate_hz=spec.frame_rate_hz, num_clusters=model.num_clusters, kmeans_hash=model.hash,
                         features=spec.description, manifest_rows=len(manifest), manifest_hash=manifest_hash(manifest))
        writer = ClusterLabelWriter(out, meta)
        progress = feats.Progress(float(manifest.seconds(spec.sample_rate_hz).sum()), f"label {manifest_path.name}")
        counts = np.zeros(model.num_clusters, dtype=np.int64)
        try:
            for _row, feats_TC in feats.iter_features(manifest, extractor, batch_seconds=args.batch_seconds,
                                                      num_workers=args.num_workers, progress=progress):
                labels_T = model.assign(feats_TC).cpu()
                counts += np.bincount(labels_T.numpy(), minlength=model.num_clusters)
                writer.write(labels_T)
        except BaseException:
            writer.abort()
            raise
        writer.close()
        used = int((counts > 0).sum())
        print(f"label: wrote {out} ({len(manifest)} rows, {int(counts.sum())} labels at {spec.frame_rate_hz:g} Hz, "
              f"{used}/{model.num_clusters} clusters used)")
    return 0
