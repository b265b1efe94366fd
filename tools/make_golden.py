#!/usr/bin/env python3
"""Write the golden blobs of tests/data: the compatibility record of the blob format (docs/FORMATS.md,
"Compatibility").

The files were written once, by the library of the day, and are committed; tests/test_golden.py checks that
every later library reads them back and writes the same bytes again, and tests/test_format_reference.py that
the document's own reader (tests/_format_reference.py) decodes them. Do not regenerate them to make a test
pass: a format change adds a version and keeps these files loading. This script therefore refuses to overwrite
existing files; `--out DIR` writes a fresh set elsewhere (e.g. to compare a new encoder's bytes).

    PYTHONPATH=python FLASHSPMM_LIBRARY=build/libflashspmm.so python tools/make_golden.py [--out DIR]

Per dtype (float16, bfloat16) and case, one input matrix as uint16 bit patterns (<dtype>-<case>.npy, -0.0
entries included, as given to compress), and its blob in both formats (<format>-<dtype>-<case>.fspmm); one
model file (save_model) holding several of them; golden.json describes every file. tests/data/model-v1.fspmm
(model file version 1) was written by flashspmm 0.1, model-v2.fspmm by 0.2; this script now writes model-v2.fspmm.
"""

import argparse
import json
import os
import sys

import numpy as np

# A fixed seed: the inputs are a function of this file only.
SEED = 20240614

# value bits per dtype: quiet NaN, signalling NaN (payload 1), negative NaN, +Inf, -Inf, smallest positive and
# negative subnormals, a larger subnormal, largest finite, -0.0
SPECIAL_BITS = {
    "float16": {
        "nan": 0x7E00,
        "snan": 0x7C01,
        "neg_nan": 0xFE00,
        "inf": 0x7C00,
        "neg_inf": 0xFC00,
        "sub": 0x0001,
        "neg_sub": 0x8001,
        "sub_big": 0x03FF,
        "max": 0x7BFF,
        "neg_zero": 0x8000,
    },
    "bfloat16": {
        "nan": 0x7FC0,
        "snan": 0x7F81,
        "neg_nan": 0xFFC0,
        "inf": 0x7F80,
        "neg_inf": 0xFF80,
        "sub": 0x0001,
        "neg_sub": 0x8001,
        "sub_big": 0x007F,
        "max": 0x7F7F,
        "neg_zero": 0x8000,
    },
}

# name -> (M, K, fraction of zeros); every case but the all-zero one holds each special value
CASES = {
    "1x1": (1, 1, 0.0),
    "63x65": (63, 65, 0.5),
    "130x200": (130, 200, 0.9),
    "64x64-zero": (64, 64, 1.0),
    "70x70-dense": (70, 70, 0.0),
}

# model.fspmm: name -> (format, dtype, case)
MODEL = {
    "layers.0.q_proj": ("bitmap", "float16", "63x65"),
    "layers.0.k_proj": ("tiled_csl", "bfloat16", "130x200"),
    "layers.1.v_proj": ("bitmap", "bfloat16", "70x70-dense"),
    "layers.1.o_proj": ("tiled_csl", "float16", "64x64-zero"),
    "lm_head": ("tiled_csl", "float16", "1x1"),
}


def random_bits(rng, n, dtype):
    """n Gaussian values of `dtype` as bit patterns, none of them zero."""
    f = rng.standard_normal(n).astype(np.float32)
    if dtype == "float16":
        bits = f.astype(np.float16).view(np.uint16)
    else:
        u = f.view(np.uint32).astype(np.uint64)
        bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    bits[(bits & 0x7FFF) == 0] = 0x3C00 if dtype == "float16" else 0x3F80  # 1.0
    return bits


def make_input(rng, dtype, case):
    m, k, sparsity = CASES[case]
    n = m * k
    if case == "1x1":  # one stored value: a signalling NaN, whose payload must survive
        return np.array([[SPECIAL_BITS[dtype]["snan"]]], dtype=np.uint16)
    bits = random_bits(rng, n, dtype)
    order = rng.permutation(n)
    zeros = int(round(sparsity * n))
    bits[order[:zeros]] = 0
    specials = SPECIAL_BITS[dtype]
    if zeros == n:  # all zero: some of them -0.0
        bits[order[: n // 8]] = specials["neg_zero"]
        return bits.reshape(m, k)
    stored = order[zeros:]
    names = [name for name in specials if name != "neg_zero"]
    for i, name in enumerate(names):  # each special value in at least one stored place
        bits[stored[i]] = specials[name]
    if zeros:
        bits[order[: max(1, zeros // 10)]] = specials["neg_zero"]
    return bits.reshape(m, k)


def write_new(path, data):
    if os.path.exists(path):
        raise SystemExit(
            f"{path} exists: golden files are written once (see docs/FORMATS.md, Compatibility); "
            f"pass --out DIR to write a fresh set elsewhere"
        )
    with open(path, "wb") as f:
        f.write(data)


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        default=os.path.normpath(os.path.join(here, os.pardir, "tests", "data")),
        help="folder to write into (default: tests/data of this checkout)",
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.join(here, os.pardir, "python"))
    import flashspmm

    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(SEED)
    manifest = {"library_version": flashspmm.__version__, "blob_version": 1, "blobs": [], "model": {}}
    matrices = {}
    for dtype in ("float16", "bfloat16"):
        for case in CASES:
            bits = make_input(rng, dtype, case)
            dense_name = f"{dtype}-{case}.npy"
            path = os.path.join(args.out, dense_name)
            if os.path.exists(path):
                raise SystemExit(f"{path} exists: golden files are written once; pass --out DIR")
            np.save(path, bits)
            for fmt in ("bitmap", "tiled_csl"):
                W = flashspmm.compress(bits, format=fmt, dtype=dtype)
                name = f"{fmt}-{dtype}-{case}.fspmm"
                write_new(os.path.join(args.out, name), W.blob().tobytes())
                matrices[(fmt, dtype, case)] = W
                manifest["blobs"].append(
                    {
                        "file": name,
                        "dense": dense_name,
                        "format": fmt,
                        "dtype": dtype,
                        "shape": list(W.shape),
                        "nnz": W.nnz,
                        "nbytes": W.nbytes,
                    }
                )
    model_path = os.path.join(args.out, "model-v2.fspmm")
    if os.path.exists(model_path):
        raise SystemExit(f"{model_path} exists: golden files are written once; pass --out DIR")
    flashspmm.save_model(model_path, {name: matrices[key] for name, key in MODEL.items()})
    manifest["model_v2"] = {
        "file": "model-v2.fspmm",
        "matrices": {name: "{}-{}-{}.fspmm".format(*key) for name, key in MODEL.items()},
    }
    write_new(os.path.join(args.out, "golden.json"), (json.dumps(manifest, indent=1) + "\n").encode())
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"wrote {len(manifest['blobs'])} blobs, their inputs and model.fspmm to {args.out} ({total} bytes)")


if __name__ == "__main__":
    main()
