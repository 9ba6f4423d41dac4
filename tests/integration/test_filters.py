#!/usr/bin/env python3
"""Byte-grouping filters (issue 5): safetensors and other weight files whose chunks the packer
filters must come back byte for byte through a FUSE mount and through `torshpkg extract`, whatever
the dtype, the alignment or a wrong dtype label; and `inspect --json` must show that the packer
chose the filters the rules in docs/FORMAT.md ("How the packer chooses filters") call for.

The safetensors files are written here with struct/json (plain python3, no numpy):
every dtype with odd element counts, an odd tensor byte length and odd total file lengths; an F32
tensor straddling a 64 KiB chunk boundary at an offset that is not a multiple of 4; headers whose
length leaves the data misaligned for 2- and 4-byte elements; random bytes labelled BF16; chunks
that mix F32, BF16 and I8 tensors; and .bin files (the sampling path) of fp16 values and of random
bytes.

Environment: TORSHPKG, MOUNT_TORSHPKG (set by meson), optionally TORSHPKG_TEST_TMPDIR.
"""
from __future__ import annotations

import json
import os
import random
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_roundtrip import extract_checks, random_reads  # noqa: E402
from tpkgtest import Harness, inspect_json, sha256_file, tail  # noqa: E402

K64 = 64 << 10
# Files are packed alone at this chunk size to check the packer's choice. Not 64K: zstd codes a
# 64K or 128K chunk as one block with one literal table for all its planes, so byte grouping gains
# nothing on fp16 there and the packer rightly keeps plain zstd; from 256K the planes of 2-byte
# elements get blocks of their own.
SOLO_CHUNK = "256K"
KFILTERS = 1 << 2  # header incompat bit: some chunk is filtered (docs/FORMAT.md, Feature flags)


# -- data ----------------------------------------------------------------------------------------

def values(rnd: random.Random, dtype: str, count: int, scale: float = 0.02) -> bytes:
    """count little-endian elements of weight-like values (normal, std `scale`); I8 small ints."""
    if dtype == "I8":
        return bytes(rnd.randint(-12, 12) & 0xFF for _ in range(count))
    v = [rnd.gauss(0.0, scale) for _ in range(count)]
    if dtype == "F16":
        return struct.pack(f"<{count}e", *v)
    f32 = struct.pack(f"<{count}f", *v)
    if dtype == "F32":
        return f32
    assert dtype == "BF16"  # bf16 = the upper half of the float32 pattern (truncated)
    return struct.pack(f"<{count}H", *(u >> 16 for u in struct.unpack(f"<{count}I", f32)))


def safetensors(tensors, header_len=None, trailing=b"") -> bytes:
    """tensors: (name, dtype, shape, data) laid out back to back in this order. header_len pads the
    JSON header with spaces to exactly that many bytes, which sets where the data starts (8 +
    header_len); by default it is padded to a multiple of 8 like the reference writer. `trailing`
    bytes after the last tensor belong to no tensor."""
    hdr = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, dtype, shape, data in tensors:
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    text = json.dumps(hdr, separators=(",", ":")).encode()
    if header_len is None:
        header_len = len(text) + (-len(text)) % 8
    assert header_len >= len(text), (header_len, len(text))
    text += b" " * (header_len - len(text))
    return struct.pack("<Q", len(text)) + text + b"".join(t[3] for t in tensors) + trailing


def build_cases(rnd: random.Random) -> dict:
    """relative path -> (bytes, filters expected in a package of that file alone, True when every
    chunk is expected stored, chunk size of that package). The expectations follow the rules in
    docs/FORMAT.md."""
    c = {}

    # Every dtype: odd element counts, small and large tensors, odd total length.
    bf16 = [("a", "BF16", [300001], values(rnd, "BF16", 300001)),
            ("b", "BF16", [777], values(rnd, "BF16", 777)),
            # An odd byte range (shape says 1000 elements; torshpkg does not cross-check): every
            # later tensor starts at an odd offset, so the phase of its chunks is 1.
            ("odd_bytes", "BF16", [1000], values(rnd, "BF16", 1000) + b"\x01"),
            ("c", "BF16", [65537], values(rnd, "BF16", 65537))]
    c["dtypes/bf16.safetensors"] = (safetensors(bf16, trailing=b"\x07\x08"), {"bf16"}, False,
                                    SOLO_CHUNK)
    f16 = [("a", "F16", [250001], values(rnd, "F16", 250001)), ("b", "F16", [3], values(rnd, "F16", 3))]
    c["dtypes/f16.safetensors"] = (safetensors(f16, trailing=b"\x00"), {"fp16"}, False, SOLO_CHUNK)
    f32 = [("a", "F32", [150001], values(rnd, "F32", 150001)), ("b", "F32", [5], values(rnd, "F32", 5))]
    c["dtypes/f32.safetensors"] = (safetensors(f32, trailing=b"\xff"), {"fp32"}, False, SOLO_CHUNK)

    # Headers that leave the data misaligned: at 8 + 1001 and 8 + 999 (odd), 8 + 1002 (2 mod 4).
    c["misaligned/bf16-odd-header.safetensors"] = (
        safetensors([("w", "BF16", [200000], values(rnd, "BF16", 200000))], header_len=1001),
        {"bf16"}, False, SOLO_CHUNK)
    c["misaligned/f16-odd-header.safetensors"] = (
        safetensors([("w", "F16", [200001], values(rnd, "F16", 200001))], header_len=999),
        {"fp16"}, False, SOLO_CHUNK)
    c["misaligned/f32-2mod4-header.safetensors"] = (
        safetensors([("w", "F32", [100001], values(rnd, "F32", 100001))], header_len=1002),
        {"fp32"}, False, SOLO_CHUNK)

    # An F32 tensor that starts 1001 bytes before the first 64 KiB boundary, at an offset that is
    # 3 mod 4 (so chunk 1 has phase 3), and covers chunks 1 and 2 whole.
    data_at = 8 + 993
    pre = 65536 - 1001 - data_at
    straddle = [("pre", "I8", [pre], values(rnd, "I8", pre)),
                ("w", "F32", [40001], values(rnd, "F32", 40001)),
                ("post", "BF16", [5001], values(rnd, "BF16", 5001))]
    assert (data_at + pre) % 4 == 3
    c["straddle.safetensors"] = (safetensors(straddle, header_len=993), {"fp32"}, False, "64K")

    # Random bytes that claim to be BF16: the filter loses its trials, nothing compresses.
    c["random-bf16.safetensors"] = (
        safetensors([("r", "BF16", [300000], rnd.randbytes(600000))]), set(), True, SOLO_CHUNK)

    # One chunk of small tensors of three dtypes, none covering half of it: plain zstd only.
    mixed = [("f", "F32", [5000], values(rnd, "F32", 5000)), ("h", "BF16", [10001], values(rnd, "BF16", 10001)),
             ("i", "I8", [20003], values(rnd, "I8", 20003)), ("g", "F32", [7], values(rnd, "F32", 7))]
    c["mixed/no-majority.safetensors"] = (safetensors(mixed), set(), False, SOLO_CHUNK)
    # The same mix where one F32 tensor covers most of the chunk: that tensor picks fp32.
    mixed_f32 = [("h", "BF16", [4001], values(rnd, "BF16", 4001)), ("f", "F32", [9001], values(rnd, "F32", 9001)),
                 ("i", "I8", [8003], values(rnd, "I8", 8003))]
    c["mixed/f32-majority.safetensors"] = (safetensors(mixed_f32), {"fp32"}, False, SOLO_CHUNK)

    # Other weight files: the first two chunks try bf16 and fp32 (fp16 values group like bf16).
    c["other/fp16-values.bin"] = (values(rnd, "F16", 300001), {"bf16"}, False, SOLO_CHUNK)
    c["other/random.bin"] = (rnd.randbytes(500001), set(), True, SOLO_CHUNK)
    return c


# -- checks --------------------------------------------------------------------------------------

def filters_used(info: dict) -> set:
    return {f for f, v in info.get("filters", {}).items() if f != "none" and v.get("chunks", 0) > 0}


def incompat_flags(pkg: str) -> int:
    with open(pkg, "rb") as f:
        head = f.read(64)
    return struct.unpack_from("<Q", head, 24)[0]


def pack(h: Harness, src: str, pkg: str, *opts: str) -> dict | None:
    r = h.tpkg("pack", src, "-o", pkg, "-q", *opts, timeout=300)
    if not h.check(f"pack {os.path.basename(src)} {' '.join(opts)} exits 0", r.returncode == 0,
                   f"exit {r.returncode}: {tail(r.stderr)}"):
        return None
    return inspect_json(h, pkg)


def mount_roundtrip(h: Harness, label: str, pkg: str, src: str, files: list, chunk: int) -> None:
    """Every file read whole through a fresh mount, then random chunk-crossing reads."""
    mnt = os.path.join(h.tmp, "mnt-" + label.replace(" ", "-"))
    rc, log = h.mount(pkg, mnt, check_name=f"{label}: mount.torshpkg exits 0 and the mount is there")
    if rc != 0 or not os.path.ismount(mnt):
        return
    try:
        bad = []
        for rel in files:
            try:
                if sha256_file(os.path.join(mnt, rel)) != sha256_file(os.path.join(src, rel)):
                    bad.append(rel)
            except OSError as e:
                bad.append(f"{rel}: {e}")
        h.check(f"{label}: all {len(files)} files read back byte-exact through the mount", not bad, f"{bad[:5]}")
        for rel in ("straddle.safetensors", "dtypes/bf16.safetensors", "misaligned/f32-2mod4-header.safetensors"):
            random_reads(h, f"{label} {rel}", os.path.join(src, rel), os.path.join(mnt, rel), chunk,
                         threads=4, reads=30, max_len=4 * chunk)
    finally:
        h.check(f"{label}: unmounted", h.unmount(mnt))


def main():
    with Harness("filters", deadline=540) as h:
        rnd = random.Random(5)
        t = time.monotonic()
        cases = build_cases(rnd)
        src = os.path.join(h.tmp, "src")
        for rel, (data, *_) in cases.items():
            os.makedirs(os.path.dirname(os.path.join(src, rel)), exist_ok=True)
            with open(os.path.join(src, rel), "wb") as f:
                f.write(data)
        files = sorted(cases)
        odd = [rel for rel in files if len(cases[rel][0]) % 2]
        h.check("every dtypes/ file has an odd length", all(f in odd for f in files if f.startswith("dtypes/")),
                f"odd: {odd}")
        h.note(f"{len(files)} files, {sum(len(c[0]) for c in cases.values()) / 2**20:.1f} MiB, "
               f"{len(odd)} of odd length, generated in {time.monotonic() - t:.1f} s")

        h.section("filters chosen per file (each file packed alone)")
        for rel in files:
            _, want, stored_only, chunk = cases[rel]
            solo = os.path.join(h.tmp, "solo", rel.replace("/", "_"))
            os.makedirs(solo)
            os.link(os.path.join(src, rel), os.path.join(solo, os.path.basename(rel)))
            info = pack(h, solo, solo + ".tpkg", "--chunk-size", chunk)
            if not info:
                continue
            got = filters_used(info)
            codecs = info.get("codecs", {})
            h.check(f"{rel}: filters used {sorted(got) or 'none'}, expected {sorted(want) or 'none'}", got == want,
                    f"inspect filters {info.get('filters')}")
            if stored_only:
                h.check(f"{rel}: every chunk is stored (incompressible)", set(codecs) == {"stored"}, f"{codecs}")
            flags = incompat_flags(solo + ".tpkg")
            h.check(f"{rel}: header incompat bit 2 set exactly when a chunk is filtered",
                    bool(flags & KFILTERS) == bool(got), f"incompat_flags {flags:#x}")

        h.section("round trips of the whole tree")
        packages = [("auto 64K", ["--chunk-size", "64K"], K64), ("auto 1M", [], 1 << 20),
                    ("none 64K", ["--chunk-size", "64K", "--filters", "none"], K64)]
        for label, opts, chunk in packages:
            pkg = os.path.join(h.tmp, label.replace(" ", "-") + ".tpkg")
            info = pack(h, src, pkg, *opts)
            if not info:
                continue
            used = filters_used(info)
            if "none" in opts:
                h.check(f"{label}: --filters none filters no chunk and leaves incompat_flags 0",
                        not used and set(info.get("filters", {})) == {"none"} and incompat_flags(pkg) == 0,
                        f"filters {info.get('filters')}, incompat_flags {incompat_flags(pkg):#x}")
            else:
                # At 64K fp16 chunks stay plain (see SOLO_CHUNK): no fp16 required there.
                want = {"bf16", "fp16", "fp32"} if chunk > K64 else {"bf16", "fp32"}
                h.check(f"{label}: {', '.join(sorted(want))} chunks in the package, incompat bit 2 set",
                        want <= used <= {"bf16", "fp16", "fp32"} and incompat_flags(pkg) & KFILTERS,
                        f"filters {info.get('filters')}, incompat_flags {incompat_flags(pkg):#x}")
            h.note(f"{label}: " + ", ".join(f"{f} {v['chunks']} chunks ({v['ratio']:.3f})"
                                            for f, v in info.get("filters", {}).items()))
            r = h.tpkg("verify", pkg, timeout=300)
            h.check(f"{label}: torshpkg verify exits 0", r.returncode == 0, f"exit {r.returncode}: {tail(r.stderr)}")
            mount_roundtrip(h, label, pkg, src, files, chunk)
            extract_checks(h, label, pkg, src, os.path.join(h.tmp, "x-" + label.replace(" ", "-")))


if __name__ == "__main__":
    main()
