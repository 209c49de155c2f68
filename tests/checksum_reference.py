#!/usr/bin/env python3
"""The expert checksum (ChecksumBytes in include/eplb/weights.h), written
again from its definition, independently of the C++ code: prints the values
src/migration/weights_test.cc pins (ChecksumTest.PinnedValues)."""

M64 = (1 << 64) - 1
SEED = 0xcbf29ce484222325
MUL = 0x9e3779b185ebca87
FNV = 0x100000001b3
BLOCK = 4096
LANES = 32
K1, K2 = 0x9e3779b8, 0x85ebca76


def rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M64


def step(h, w):
    return rotl(((h ^ w) * MUL) & M64, 31)


def lane_step(lane, w):
    x = lane ^ w
    x = (x + (x & 0xffffffff) * K1) & M64
    x = rotl(x, 32)
    return (x + (x & 0xffffffff) * K2) & M64


def lane_seeds():
    out, x = [], 0
    for _ in range(LANES):
        x = (x + 0x9e3779b97f4a7c15) & M64
        z = x
        z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
        z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
        out.append(z ^ (z >> 31))
    return out


def checksum(data, seed=SEED):
    h, i, n = seed, 0, len(data)
    words = lambda at: int.from_bytes(data[at:at + 8], "little")
    while i + BLOCK <= n:
        lanes = lane_seeds()
        for j in range(0, BLOCK, 8 * LANES):
            for k in range(LANES):
                lanes[k] = lane_step(lanes[k], words(i + j + 8 * k))
        while len(lanes) > 1:  # Pairwise.
            lanes = [step(lanes[k], lanes[k + 1]) for k in range(0, len(lanes), 2)]
        h = step(h, lanes[0])
        i += BLOCK
    while i + 8 <= n:
        h = step(h, words(i))
        i += 8
    while i < n:
        h = ((h ^ data[i]) * FNV) & M64
        i += 1
    return h


def pattern(n):
    out, x = bytearray(n), 12345
    for i in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) & M64
        out[i] = x >> 56
    return bytes(out)


if __name__ == "__main__":
    for n in (3, 100, 3 * BLOCK + 13):
        print(f"Pattern({n}): {checksum(pattern(n))}")
