"""Per-batch cost of BatchLoader on CIFAR-shaped data (target: < 2 ms per batch of 128 on CPU).

Prints ms/batch for augment none/cifar (NCHW and channels_last) and the ratio to a minimal
hand loop (index + float + normalise, no augmentation) measured in the same run.
Uses random uint8 data, so it needs no dataset files.  Run: .venv/bin/python bench/bench_loader.py
(``--smoke``: 512 images, one repeat: checks that it runs).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gradscope.data import BatchLoader


def per_batch_ms(it_fn, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        n = 0
        for xb, yb in it_fn():
            n += 1
        best = min(best, (time.perf_counter() - t) / n * 1e3)
    return best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="512 images, one repeat")
    a = ap.parse_args(argv)
    reps = 1 if a.smoke else 3
    torch.manual_seed(0)
    n, bs = (512 if a.smoke else 10_000), 128
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)

    def hand():
        perm = torch.randperm(n)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            yield (x[idx].float() / 255 - m) / s, y[idx]

    base = per_batch_ms(hand, reps)
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"hand loop (no augmentation): {base:.3f} ms/batch of {bs}")
    for aug in ("none", "cifar"):
        for cl in (False, True):
            ld = BatchLoader(x, y, bs, shuffle=True, augment=aug, mean=mean, std=std, seed=0, channels_last=cl)
            ms = per_batch_ms(lambda: iter(ld), reps)
            print(f"BatchLoader augment={aug:5s} channels_last={cl!s:5s}: {ms:.3f} ms/batch  "
                  f"(x{ms / base:.2f} of hand loop; target < 2 ms)")


if __name__ == "__main__":
    main()
