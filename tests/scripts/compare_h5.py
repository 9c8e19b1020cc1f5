#!/usr/bin/env python3
"""Exits 0 when every HDF5 file given has exactly the datasets and attributes of the first
(bit for bit, NaN equal to NaN), except wall-clock timings (attributes named 'seconds')."""
import sys

import h5py
import numpy as np

IGNORED_ATTRS = {"seconds"}


def contents(path):
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            for key, value in obj.attrs.items():
                if key not in IGNORED_ATTRS:
                    out[f"{name}@{key}"] = np.asarray(value)
            if isinstance(obj, h5py.Dataset):
                out[name] = np.asarray(obj[()])
        visit("/", f)
        f.visititems(visit)
    return out


def equal(a, b):
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "f":
        return np.array_equal(a, b, equal_nan=True)
    return np.array_equal(a, b)


reference = contents(sys.argv[1])
ok = True
for path in sys.argv[2:]:
    other = contents(path)
    for key in sorted(set(reference) | set(other)):
        if key not in reference or key not in other:
            print(f"FAIL {path}: '{key}' is only in {'the reference' if key in reference else path}")
            ok = False
        elif not equal(reference[key], other[key]):
            print(f"FAIL {path}: '{key}' differs: {reference[key]!r} vs {other[key]!r}")
            ok = False
    print(f"{path}: {len(other)} datasets and attributes compared with {sys.argv[1]}")
print("identical" if ok else "DIFFERENT")
sys.exit(0 if ok else 1)
