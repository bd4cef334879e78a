#!/usr/bin/env python3
"""Makes data/fashion-mnist-subset/ from the full Fashion-MNIST.

The subset is stratified and deterministic: the first 1,000 training images of each class and the
first 200 test images of each class, in file order (so the images keep their relative order).
The output files are IDX, gzip-compressed with a zero timestamp and no file name, so running this
script twice gives byte-identical files.

Usage: python3 data/make_subset.py [SOURCE_DIR] [OUT_DIR]
  SOURCE_DIR defaults to /usr/share/datasets/fashion-mnist (Debian package `dataset-fashion-mnist`)
  OUT_DIR defaults to data/fashion-mnist-subset beside this script.
"""

import gzip
import os
import struct
import sys

TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200
CLASSES = 10


def read_idx(path):
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    assert zero == 0 and dtype == 0x08, f"{path}: not an IDX u8 file"
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    data = raw[4 + 4 * ndim :]
    size = 1
    for d in dims:
        size *= d
    assert len(data) == size, f"{path}: expected {size} bytes of data, found {len(data)}"
    return dims, data


def write_idx(path, magic, dims, data):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)
    with open(path, "wb") as f:
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=9, mtime=0) as g:
            g.write(header)
            g.write(bytes(data))


def subset(src, out, prefix, per_class):
    idims, images = read_idx(os.path.join(src, f"{prefix}-images-idx3-ubyte.gz"))
    ldims, labels = read_idx(os.path.join(src, f"{prefix}-labels-idx1-ubyte.gz"))
    n, rows, cols = idims
    assert ldims == (n,), "image and label counts differ"
    pixels = rows * cols
    counts = [0] * CLASSES
    chosen = []
    for i, label in enumerate(labels):
        if counts[label] < per_class:
            counts[label] += 1
            chosen.append(i)
    assert counts == [per_class] * CLASSES, f"{prefix}: not enough images per class: {counts}"
    out_images = bytearray()
    for i in chosen:
        out_images += images[i * pixels : (i + 1) * pixels]
    out_labels = bytes(labels[i] for i in chosen)
    write_idx(os.path.join(out, f"{prefix}-images-idx3-ubyte.gz"), 2051, (len(chosen), rows, cols), out_images)
    write_idx(os.path.join(out, f"{prefix}-labels-idx1-ubyte.gz"), 2049, (len(chosen),), out_labels)
    print(f"{prefix}: {len(chosen)} images ({per_class} per class), last source index {chosen[-1]}")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    src = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "fashion-mnist-subset")
    os.makedirs(out, exist_ok=True)
    subset(src, out, "train", TRAIN_PER_CLASS)
    subset(src, out, "t10k", TEST_PER_CLASS)


if __name__ == "__main__":
    main()
