#!/usr/bin/env python3
"""Builds the coldfuse demo tasks from the UCI handwritten-digits images.

Reads scikit-learn's copy of the UCI "Optical Recognition of Handwritten Digits" data
(1797 8x8 images, 64 pixel values 0..16 then the digit) and writes one folder per task,
each with train.csv and test.csv (header p0,...,p63,label; pixels scaled to [0, 1];
label = class index 0..N-1), plus README.txt. Deterministic: the same files every run.

Tasks:
  unseen-digits10  held-out images no contributor ever sees; 10 classes (the digit);
                   300 train rows (any first 10k rows hold k of each digit) / 400 test rows
  low-digits       digits 0-4 only; 5 classes (the digit)
  high-digits      digits 5-9 only; 5 classes (digit - 5)
  parity           all digits; 2 classes (0 even, 1 odd)
  mod3             all digits; 3 classes (digit % 3)
Contributor tasks draw from the images left after the held-out pool (tasks may share
images) and split 80% train / 20% test, train and test disjoint.
See docs/data.md for provenance and licence.
"""

import argparse
import csv
import gzip
import os
import random
import sys

DEFAULT_SOURCE = "/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz"
SEED = 2212
NUM_PIXELS = 64
UNSEEN_TRAIN_PER_DIGIT = 30  # 300 rows
UNSEEN_TEST_PER_DIGIT = 40  # 400 rows
TRAIN_FRACTION = 0.8

# name -> (description, which digits, digit -> class index, number of classes)
CONTRIBUTOR_TASKS = [
    ("low-digits", "digits 0-4 only; 5 classes: the digit",
     lambda d: d <= 4, lambda d: d, 5),
    ("high-digits", "digits 5-9 only; 5 classes: the digit minus 5",
     lambda d: d >= 5, lambda d: d - 5, 5),
    ("parity", "all digits; 2 classes: 0 = even, 1 = odd",
     lambda d: True, lambda d: d % 2, 2),
    ("mod3", "all digits; 3 classes: the digit modulo 3",
     lambda d: True, lambda d: d % 3, 3),
]
UNSEEN_DESCRIPTION = ("held-out images no contributor ever sees; 10 classes: the digit. "
                      "train.csv has 300 rows ordered so that any first 10k rows hold k "
                      "images of each digit (the demo fine-tunes on the first 100); "
                      "test.csv has 400")


def load_digits(path):
    """Returns a list of (pixels: list of 64 ints, digit: int)."""
    images = []
    with gzip.open(path, "rt") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) != NUM_PIXELS + 1:
                sys.exit(f"{path}: line {line_no}: expected {NUM_PIXELS + 1} fields, "
                         f"found {len(row)}")
            values = [int(float(v)) for v in row]
            pixels, digit = values[:NUM_PIXELS], values[NUM_PIXELS]
            if not 0 <= digit <= 9 or any(not 0 <= p <= 16 for p in pixels):
                sys.exit(f"{path}: line {line_no}: pixel outside 0..16 or digit outside 0..9")
            images.append((pixels, digit))
    return images


def write_csv(path, rows):
    """rows: list of (pixels, label)."""
    with open(path, "w", newline="") as f:
        f.write(",".join([f"p{i}" for i in range(NUM_PIXELS)] + ["label"]) + "\n")
        for pixels, label in rows:
            f.write(",".join(format(p / 16, ".6g") for p in pixels) + f",{label}\n")


def write_task(out_dir, name, train, test, num_classes):
    task_dir = os.path.join(out_dir, name)
    os.makedirs(task_dir, exist_ok=True)
    # Every test class must occur in train, or a contributor's loader rejects the split.
    assert {l for _, l in test} <= {l for _, l in train}, name
    write_csv(os.path.join(task_dir, "train.csv"), train)
    write_csv(os.path.join(task_dir, "test.csv"), test)
    print(f"{name}: {len(train)} train rows, {len(test)} test rows, {num_classes} classes")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", nargs="?", default="demo-data",
                        help="output folder (default: demo-data)")
    parser.add_argument("--source", default=DEFAULT_SOURCE,
                        help=f"digits.csv.gz to read (default: {DEFAULT_SOURCE}, from "
                             "Debian's python3-sklearn)")
    args = parser.parse_args()
    if not os.path.exists(args.source):
        sys.exit(f"{args.source} not found: install python3-sklearn "
                 "(apt-get install python3-sklearn) or pass --source")

    images = load_digits(args.source)
    rng = random.Random(SEED)
    by_digit = {d: [] for d in range(10)}
    for index, (_, digit) in enumerate(images):
        by_digit[digit].append(index)
    for d in range(10):
        rng.shuffle(by_digit[d])

    # Held-out pool first: stratified, so the unseen task is balanced.
    unseen_train_blocks = []
    unseen_test, held_out = [], set()
    for d in range(10):
        picked = by_digit[d][:UNSEEN_TRAIN_PER_DIGIT + UNSEEN_TEST_PER_DIGIT]
        held_out.update(picked)
        unseen_train_blocks.append(picked[:UNSEEN_TRAIN_PER_DIGIT])
        unseen_test.extend(picked[UNSEEN_TRAIN_PER_DIGIT:])
    unseen_train = []
    for k in range(UNSEEN_TRAIN_PER_DIGIT):  # one of each digit per block of 10 rows
        block = [unseen_train_blocks[d][k] for d in range(10)]
        rng.shuffle(block)
        unseen_train.extend(block)
    rng.shuffle(unseen_test)
    pool = [i for i in range(len(images)) if i not in held_out]

    os.makedirs(args.out_dir, exist_ok=True)
    readme = ["coldfuse demo data, made by scripts/prepare_digits.py from the UCI",
              "\"Optical Recognition of Handwritten Digits\" images (see docs/data.md).",
              "Each folder is a task: train.csv and test.csv with columns p0..p63 (8x8",
              "pixels scaled to [0, 1]) and label (class index 0..N-1).", ""]
    for name, description, keep, to_class, num_classes in CONTRIBUTOR_TASKS:
        chosen = [i for i in pool if keep(images[i][1])]
        rng.shuffle(chosen)
        n_train = round(TRAIN_FRACTION * len(chosen))
        rows = [(images[i][0], to_class(images[i][1])) for i in chosen]
        write_task(args.out_dir, name, rows[:n_train], rows[n_train:], num_classes)
        readme.append(f"{name}: {description}. Contributor task: "
                      f"{n_train} train / {len(chosen) - n_train} test rows.")
    write_task(args.out_dir, "unseen-digits10",
               [(images[i][0], images[i][1]) for i in unseen_train],
               [(images[i][0], images[i][1]) for i in unseen_test], 10)
    readme.append(f"unseen-digits10: {UNSEEN_DESCRIPTION}. Evaluation task: measures "
                  "whether the fused base is a better starting point.")
    with open(os.path.join(args.out_dir, "README.txt"), "w") as f:
        f.write("\n".join(readme) + "\n")


if __name__ == "__main__":
    main()
