"""k-means benchmark: speechbs's path (faiss fit + torch assignment) against fairseq's MiniBatchKMeans.

Same frames for both: Gaussian-mixture data shaped like HuBERT's two k-means
jobs, 39-d MFCC-like with K=100 and 768-d layer-like with K=500. Reports fit
and assignment throughput in frames per second, the speedup, and the inertia
per frame of each (so a faster fit is not a worse clustering).

sklearn uses fairseq's learn_kmeans.py settings except ``n_init`` (fairseq: 20;
default 3 here to keep the run short; its fit cost grows with n_init through the
k-means++ initializations, so the speedup at n_init 20 is larger).

Usage: python bench/kmeans.py [--json kmeans.json] [--threads 1] [--n-init 3] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from speechbs.targets.kmeans import KMeansModel, KMeansSettings, fit

CASES = [("mfcc-like", 39, 100, 100_000), ("layer-like", 768, 500, 20_000)]


def mixture(num_frames: int, dim: int, num_components: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_components, dim)).astype(np.float32) * 3.0
    ids = rng.integers(0, num_components, num_frames)
    return (centres[ids] + rng.normal(size=(num_frames, dim)).astype(np.float32)).astype(np.float32)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_case(name: str, dim: int, k: int, num_frames: int, args: argparse.Namespace) -> dict:
    feats_NC = mixture(num_frames, dim, 2 * k)
    ours, ours_fit_s = timed(lambda: fit(feats_NC, KMeansSettings(num_clusters=k, max_frames=num_frames,
                                                                  num_threads=args.threads)))
    _, ours_assign_s = timed(lambda: ours.assign(torch.from_numpy(feats_NC)))
    ref, ref_fit_s = timed(lambda: fit(feats_NC, KMeansSettings(num_clusters=k, backend="sklearn",
                                                                max_frames=num_frames, sklearn_n_init=args.n_init,
                                                                num_threads=args.threads)))
    _, ref_assign_s = timed(lambda: _sklearn_predict(ref, feats_NC, args.threads))
    return {"case": name, "dim": dim, "k": k, "frames": num_frames,
            "ours_fit_fps": num_frames / ours_fit_s, "sklearn_fit_fps": num_frames / ref_fit_s,
            "fit_speedup": ref_fit_s / ours_fit_s,
            "ours_assign_fps": num_frames / ours_assign_s, "sklearn_assign_fps": num_frames / ref_assign_s,
            "assign_speedup": ref_assign_s / ours_assign_s,
            "ours_inertia": ours.inertia_per_frame, "sklearn_inertia": ref.inertia_per_frame,
            "ours_fit_s": ours_fit_s, "sklearn_fit_s": ref_fit_s}


def _sklearn_predict(model: KMeansModel, feats_NC: np.ndarray, threads: int) -> np.ndarray:
    """What fairseq's dump_km_label.py does: sklearn ``predict`` on the fitted centres."""
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    km = MiniBatchKMeans(n_clusters=model.num_clusters)
    km.cluster_centers_ = model.centroids_KC.numpy().astype(np.float32)
    km._n_threads = max(threads, 1)
    km.n_features_in_ = feats_NC.shape[1]
    with threadpool_limits(threads or None):
        return km.predict(feats_NC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("--threads", type=int, default=1, help="threads for both (0: all cores)")
    parser.add_argument("--n-init", type=int, default=3, help="sklearn restarts (fairseq: 20)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the frame counts")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rows = [run_case(name, dim, k, int(n * args.scale), args) for name, dim, k, n in CASES]
    print(f"threads {args.threads}, sklearn n_init {args.n_init}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}")
    print("| case | frames | dim | K | fit fps ours | fit fps sklearn | fit speedup | assign fps ours | "
          "assign fps sklearn | assign speedup | inertia/frame ours | inertia/frame sklearn |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['frames']:,} | {r['dim']} | {r['k']} | {r['ours_fit_fps']:,.0f} | "
              f"{r['sklearn_fit_fps']:,.0f} | {r['fit_speedup']:.1f}x | {r['ours_assign_fps']:,.0f} | "
              f"{r['sklearn_assign_fps']:,.0f} | {r['assign_speedup']:.1f}x | {r['ours_inertia']:.2f} | "
              f"{r['sklearn_inertia']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "n_init": args.n_init, "date": time.strftime("%Y-%m-%d"),
                       "machine": platform.platform(), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
