#!/usr/bin/env python3
"""Exits 0 when every HDF5 file given has exactly the datasets and attributes of the first
(bit for bit, NaN equal to NaN), except wall-clock timings (attributes named 'seconds', and the
datasets of a training log's 'timing' groups with their '_done' masks).
  compare_h5.py [--rtol R] [--ignore NAME]... reference.h5 other.h5...
--rtol: floating-point values within relative R (plus an absolute 1e-6 R for values near 0) of the
reference count as equal (runs on two backends); --ignore: attributes of that name are skipped too
(e.g. 'backend', which such runs record differently)."""
import sys

import h5py
import numpy as np

IGNORED_ATTRS = {"seconds"}
RTOL = 0.0
args = sys.argv[1:]
while args and args[0].startswith("--"):
    if args[0] == "--rtol":
        RTOL = float(args[1])
    elif args[0] == "--ignore":
        IGNORED_ATTRS.add(args[1])
    else:
        sys.exit(f"compare_h5.py: unknown option {args[0]}")
    args = args[2:]
if len(args) < 2:
    sys.exit("usage: compare_h5.py [--rtol R] [--ignore NAME]... reference.h5 other.h5...")


def contents(path):
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            for key, value in obj.attrs.items():
                if key not in IGNORED_ATTRS:
                    out[f"{name}@{key}"] = np.asarray(value)
            if isinstance(obj, h5py.Dataset) and "timing" not in name.split("/")[:-1]:
                out[name] = np.asarray(obj[()])
        visit("/", f)
        f.visititems(visit)
    return out


def equal(a, b):
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "f":
        if RTOL > 0:
            return np.allclose(a, b, rtol=RTOL, atol=1e-6 * RTOL, equal_nan=True)
        return np.array_equal(a, b, equal_nan=True)
    return np.array_equal(a, b)


reference = contents(args[0])
ok = True
for path in args[1:]:
    other = contents(path)
    for key in sorted(set(reference) | set(other)):
        if key not in reference or key not in other:
            print(f"FAIL {path}: '{key}' is only in {'the reference' if key in reference else path}")
            ok = False
        elif not equal(reference[key], other[key]):
            print(f"FAIL {path}: '{key}' differs: {reference[key]!r} vs {other[key]!r}")
            ok = False
    print(f"{path}: {len(other)} datasets and attributes compared with {args[0]}" + (f" (rtol {RTOL})" if RTOL > 0 else ""))
print(("equal within rtol" if RTOL > 0 else "identical") if ok else "DIFFERENT")
sys.exit(0 if ok else 1)
