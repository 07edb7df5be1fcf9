"""Post-processing search: the fast search against the straightforward loop, same grid, same run.

Both search thresholds 0.30..0.90 (step 0.05) x 13 minimum component sizes per class (plus the empty
decision) on the same probability maps (smooth random blobs, like a model's sigmoid output) and truth
masks, without the presence gate (its 18 thresholds would make the reference 18 times slower and cost
the fast search almost nothing):
- reference: `search_reference`, one `cv2.connectedComponentsWithStats` + filtering per
  (candidate, image, class): 169 x images x 4 calls;
- fast: `search`, components once per (threshold, image, class), every size scored from the
  component areas and per-component truth overlaps: 13 x images x 4 calls.
The benchmark also checks that both choose the same parameters with bit-identical scores.

    python -m benchmarks.postprocess [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

FULL = {"images": 50, "size": (350, 525)}
QUICK = {"images": 8, "size": (175, 262)}


def make_maps(images: int, size: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probability maps (float16) and truth masks (uint8), both (N, H, W, 4), with correlated blobs."""
    import cv2

    rng = np.random.default_rng(seed)
    height, width = size
    sigma = max(height, width) / 40.0
    truth = np.zeros((images, height, width, 4), dtype=np.uint8)
    probabilities = np.zeros((images, height, width, 4), dtype=np.float16)
    for index in range(images):
        for channel in range(4):
            field = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), sigma)
            field /= field.std() + 1e-6
            empty = rng.random() < 0.35  # like the challenge: many (image, class) pairs have no mask
            truth[index, :, :, channel] = 0 if empty else (field > 0.6)
            noise = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), sigma / 3)
            logits = (0.0 if empty else 1.2 * field) + 1.3 * noise / (noise.std() + 1e-6) - 1.0
            probabilities[index, :, :, channel] = 1.0 / (1.0 + np.exp(-logits))
    return probabilities, truth


def run(quick: bool = False) -> list[dict]:
    from harness.evaluate import postprocess

    setup = QUICK if quick else FULL
    probabilities, truth = make_maps(setup["images"], setup["size"])
    space = postprocess.build_space(setup["size"], presence_gate=False)
    # Imports (OpenCV, tqdm) and first-call costs are paid here, outside both timings.
    postprocess.search(probabilities[:1], truth[:1], space)
    postprocess.search_reference(probabilities[:1], truth[:1], postprocess.build_space(setup["size"], thresholds=[0.5], min_sizes=[0, 10]))
    started = time.perf_counter()
    fast = postprocess.search(probabilities, truth, space)
    fast_seconds = time.perf_counter() - started
    started = time.perf_counter()
    reference = postprocess.search_reference(probabilities, truth, space)
    reference_seconds = time.perf_counter() - started
    equal = (fast.choices == reference.choices and np.array_equal(fast.scores, reference.scores)
             and np.array_equal(fast.empty, reference.empty))
    height, width = setup["size"]
    case = f"{setup['images']} images x 4 classes at {height}x{width}, {space.candidates} candidates per class"
    return [
        {
            "benchmark": "postprocess",
            "case": f"search: {case}",
            "value": round(fast_seconds, 3),
            "unit": "s",
            "reference": round(reference_seconds, 3),
            "ratio": round(reference_seconds / fast_seconds, 2),
            "note": "same choices and scores as the reference" if equal else "MISMATCH with the reference",
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 images at 175x262")
    args = parser.parse_args()
    rows = run(quick=args.quick)
    for row in rows:
        print(f"{row['case']}\n  fast {row['value']:.2f} s, reference {row['reference']:.2f} s, "
              f"speed-up x{row['ratio']:.1f}; {row['note']}")


if __name__ == "__main__":
    main()
