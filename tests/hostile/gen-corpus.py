#!/usr/bin/env python3
"""Hostile-package corpus for torshpkg-corpus-check (tests/hostile/corpus_check.cpp).

    gen-corpus.py OUTDIR [BASE.tpkg [ENCRYPTED.tpkg]]  write OUTDIR/<case>.tpkg and OUTDIR/cases.json
    gen-corpus.py --make-tree DIR         write the small source tree the base package is packed from

Without BASE, the tree is packed with the CLI named by $TORSHPKG (64 KiB chunks). Every case is
derived from the base package, or built from scratch by the small writer below, and cases.json
gives each one's expected outcome class: "format_error", "integrity_error" (at open, or when a file
is read) or "ok". ENCRYPTED, the tree packed for the fuzzing identity, adds the enc-* cases
(gen_encrypted), whose classes are by construction. The class comes from `Model`, an independent re-implementation of the loader's
rules in docs/FORMAT.md (Validation) and of the signature-block parser; where a case was built to
reach one check, the generator also states that intent and refuses to write a case where the model
disagrees with it. Mutations of rooted bytes are written twice: with the root digest recomputed, so
that the check behind the digest is reached, and with the stale root ("-stale-root").

Python 3 stdlib only. zstd frames are built by hand (raw and RLE blocks), so no zstd module is needed.
"""
import copy
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile

U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
K64 = 64 << 10
HEADER_MAGIC = b"\x89TPKG\r\n\x1a"
FOOTER_MAGIC = b"TPKGEND\0"
S_IFMT, S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = 0o170000, 0o040000, 0o100000, 0o120000, 0o020000
MAX_INODES = (1 << 32) - 16
MAX_MANIFEST = 64 << 20
MAX_DEPTH = 512
KNOWN_INCOMPAT = 1 << 2  # kFilters

# Signature block (include/torshpkg/signing.hpp): 16-byte header, then 104-byte entries.
SIG_MAGIC = b"TPKGSIG\0"
SIG_HEADER, SIG_ENTRY, SIG_MAX_ENTRIES = 16, 104, 64
SIG_MAX = SIG_HEADER + SIG_MAX_ENTRIES * SIG_ENTRY

CHUNK_FMT, CHUNK_FIELDS = "<QIIBBH4s32s", ("offset", "stored", "decoded", "codec", "filter", "flags", "pad", "digest")
INODE_FMT = "<IIIIqIBB2sQII"
INODE_FIELDS = ("mode", "parent", "name_offset", "name_length", "mtime_sec", "mtime_nsec", "kind", "flags", "pad",
                "size", "first", "reserved")
FOOTER_FIELDS = ("index_offset", "chunk_count", "inode_count", "strings_size", "manifest_size", "reserved0",
                 "signature_offset", "signature_size")
CHUNK_MAX = {"stored": U32, "decoded": U32, "codec": 255, "filter": 255, "flags": 0xFFFF}
INODE_MAX = {"mode": U32, "parent": U32, "name_offset": U32, "name_length": U32, "mtime_nsec": U32, "kind": 255,
             "flags": 255, "first": U32, "reserved": U32}
assert struct.calcsize(CHUNK_FMT) == 56 and struct.calcsize(INODE_FMT) == 48


def sha256(b):
    return hashlib.sha256(b).digest()


def zstd_bound(n):
    return n + (n >> 8) + ((((128 << 10) - n) >> 11) if n < (128 << 10) else 0)


# ---------------------------------------------------------------------------------------------
# zstd frames by hand (RFC 8878): enough to make frames that decode to chosen sizes.

ZSTD_MAGIC = struct.pack("<I", 0xFD2FB528)


def zstd_frame(blocks, content_size=None, window_log=17, dict_id=None, checksum=False):
    """blocks: list of ("raw", bytes) or ("rle", byte, count). content_size None: not declared."""
    fhd = 0
    if content_size is not None:
        fhd |= 3 << 6  # 8-byte Frame_Content_Size, no single-segment flag: a window descriptor follows
    if checksum:
        fhd |= 1 << 2
    if dict_id is not None:
        fhd |= 3  # 4-byte dictionary id
    out = bytearray(ZSTD_MAGIC) + bytes([fhd, (window_log - 10) << 3])
    if dict_id is not None:
        out += struct.pack("<I", dict_id)
    if content_size is not None:
        out += struct.pack("<Q", content_size)
    for i, blk in enumerate(blocks):
        last = 1 if i == len(blocks) - 1 else 0
        if blk[0] == "raw":
            out += (last | (0 << 1) | (len(blk[1]) << 3)).to_bytes(3, "little") + blk[1]
        else:
            out += (last | (1 << 1) | (blk[2] << 3)).to_bytes(3, "little") + bytes([blk[1]])
    if checksum:
        out += b"\0\0\0\0"  # deliberately wrong (the real one is the low 32 bits of XXH64)
    return bytes(out)


def zstd_raw(content, declare=True):
    """A valid frame of raw blocks (no compression) that decodes to `content`."""
    step = 128 << 10
    blocks = [("raw", content[i:i + step]) for i in range(0, len(content), step)] or [("raw", b"")]
    return zstd_frame(blocks, len(content) if declare else None)


def zstd_rle(byte, count, declare=True, declared=None):
    step = 128 << 10
    blocks = [("rle", byte, min(step, count - i)) for i in range(0, count, step)]
    return zstd_frame(blocks, (count if declared is None else declared) if declare else None)


def filtered_form(raw, width, phase):
    """Byte-grouping filter (include/torshpkg/filter.hpp): [phase] + head + planes + tail."""
    m = (len(raw) - phase) // width
    planes = b"".join(bytes(raw[phase + i * width + j] for i in range(m)) for j in range(width))
    return bytes([phase]) + raw[:phase] + planes + raw[phase + m * width:]


# ---------------------------------------------------------------------------------------------
# A package as editable parts, and a writer that lays them out as docs/FORMAT.md says.

class Pkg:
    def __init__(self, data=None):
        if data is None:
            return
        ft = data[-128:]
        f = dict(zip(FOOTER_FIELDS, struct.unpack_from("<8Q", ft, 0)))
        idx = f["index_offset"]
        self.header = bytearray(data[:64])
        self.data = bytearray(data[64:idx])
        self.chunks = [dict(zip(CHUNK_FIELDS, struct.unpack_from(CHUNK_FMT, data, idx + 56 * k)))
                       for k in range(f["chunk_count"])]
        at = idx + 56 * f["chunk_count"]
        self.inodes = [dict(zip(INODE_FIELDS, struct.unpack_from(INODE_FMT, data, at + 48 * i)))
                       for i in range(f["inode_count"])]
        at += 48 * f["inode_count"]
        self.strings = bytearray(data[at:at + f["strings_size"]])
        at += f["strings_size"]
        self.manifest = bytes(data[at:at + f["manifest_size"]])
        at += f["manifest_size"]
        self.sig = bytes(data[at:len(data) - 128])
        self.footer = bytearray(ft)  # template for the unrooted tail (root, size, version, magic)
        self.reserved0 = f["reserved0"]

    @staticmethod
    def scratch(shift=16, incompat=0):
        p = Pkg()
        p.header = bytearray(struct.pack("<8sHHIQQB31s", HEADER_MAGIC, 1, 0, 64, 0, incompat, shift, b""))
        p.data, p.chunks, p.inodes, p.strings = bytearray(), [], [], bytearray()
        p.manifest, p.sig, p.reserved0 = b"{}", b"", 0
        p.footer = bytearray(struct.pack("<8Q32sIHH16s8s", *([0] * 8), b"", 128, 1, 0, b"", FOOTER_MAGIC))
        return p

    def clone(self):
        return copy.deepcopy(self)

    def index_bytes(self):
        parts = [struct.pack(CHUNK_FMT, *(c[k] for k in CHUNK_FIELDS)) for c in self.chunks]
        parts += [struct.pack(INODE_FMT, *(e[k] for k in INODE_FIELDS)) for e in self.inodes]
        return b"".join(parts) + bytes(self.strings) + self.manifest

    def build(self, root=True):
        """root=True: recompute the root digest; False: keep the template's (stale after edits)."""
        idx = 64 + len(self.data)
        index = self.index_bytes()
        ft = bytearray(self.footer)
        struct.pack_into("<6Q", ft, 0, idx, len(self.chunks), len(self.inodes), len(self.strings), len(self.manifest),
                         self.reserved0)
        struct.pack_into("<2Q", ft, 48, *((idx + len(index), len(self.sig)) if self.sig else (0, 0)))
        if root:
            ft[64:96] = sha256(bytes(self.header) + bytes(ft[:48]) + index)
        return bytes(self.header) + bytes(self.data) + index + self.sig + bytes(ft)

    # edits
    def add_string(self, s):
        off = len(self.strings)
        self.strings += s
        return off, len(s)

    def append_data(self, blob):
        """Appends stored bytes at the end of the chunk data (old bytes stay, unreferenced)."""
        off = 64 + len(self.data)
        self.data += blob
        return off

    def point_chunk(self, k, blob, **fields):
        c = self.chunks[k]
        c["offset"] = self.append_data(blob)
        c["stored"] = len(blob)
        c["digest"] = sha256(blob)
        c.update(fields)

    def path(self, i):
        parts = []
        while i:
            e = self.inodes[i]
            parts.append(bytes(self.strings[e["name_offset"]:e["name_offset"] + e["name_length"]]).decode())
            i = e["parent"]
        return "/".join(reversed(parts))

    def ino(self, path):
        for i in range(len(self.inodes)):
            if self.path(i) == path:
                return i
        raise KeyError(path)


def inode(mode, parent=0, name=(0, 0), size=0, first=0, mtime=1700000000):
    return {"mode": mode, "parent": parent, "name_offset": name[0], "name_length": name[1], "mtime_sec": mtime,
            "mtime_nsec": 0, "kind": 0, "flags": 0, "pad": b"\0\0", "size": size, "first": first, "reserved": 0}


def sig_block(entries, version=1, count=None, entry_size=SIG_ENTRY):
    """entries: list of (algorithm, reserved16, reserved32, key_id, signature)."""
    b = SIG_MAGIC + struct.pack("<HHI", version, len(entries) if count is None else count, entry_size)
    for alg, r16, r32, key, sig in entries:
        b += struct.pack("<HHI", alg, r16, r32) + key + sig
    return b


def sig_entry(seed, alg=1, r16=0, r32=0, key=None):
    rnd = random.Random(seed)
    return (alg, r16, r32, key if key is not None else rnd.randbytes(32), rnd.randbytes(64))


# ---------------------------------------------------------------------------------------------
# Model: the loader's checks (docs/FORMAT.md, Validation) and the read path, re-implemented.

class Refused(Exception):
    def __init__(self, cls, why):
        super().__init__(why)
        self.cls, self.why = cls, why


class Unknown(Exception):
    """The model cannot tell how a zstd frame it has not seen decodes: the case must say."""


def fmt_err(why):
    raise Refused("format_error", why)


def valid_name(name):
    if not name:
        return "empty"
    if name in (b".", b".."):
        return "dot"
    if len(name) > 255:
        return "too long"
    if b"/" in name or b"\0" in name:
        return "slash or NUL"
    try:
        name.decode("utf-8")  # strict: no overlong forms, surrogates or code points past U+10FFFF
    except UnicodeDecodeError:
        return "not UTF-8"
    return None


def check_manifest(text):
    def no_constants(c):
        raise ValueError(c)
    try:
        value = json.loads(text.decode("utf-8"), parse_constant=no_constants)
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        fmt_err(f"manifest is not JSON: {type(e).__name__}")
    if not isinstance(value, dict):
        fmt_err("manifest is not an object")


def check_signature_block(block):
    if not block:
        return
    if len(block) < SIG_HEADER:
        fmt_err("signature block too short")
    if block[:8] != SIG_MAGIC:
        fmt_err("signature block magic")
    version, count, entry_size = struct.unpack_from("<HHI", block, 8)
    if version != 1 or entry_size != SIG_ENTRY or not 1 <= count <= SIG_MAX_ENTRIES:
        fmt_err("signature block version, entry size or count")
    if len(block) != SIG_HEADER + count * SIG_ENTRY:
        fmt_err("signature block size")
    keys = set()
    for i in range(count):
        at = SIG_HEADER + i * SIG_ENTRY
        alg, r16, r32 = struct.unpack_from("<HHI", block, at)
        if alg != 1 or r16 or r32:
            fmt_err("signature algorithm or reserved bytes")
        key = block[at + 8:at + 40]
        if key in keys:
            fmt_err("two signatures by one key")
        keys.add(key)


class Model:
    def __init__(self, known_frames):
        # (digest, decoded, codec, filter) of zstd chunks known to decode correctly (the base's)
        self.known = set(known_frames)

    def open(self, b):
        """Raises Refused, or returns the parsed view used by read()."""
        n = len(b)
        if n < 192:
            fmt_err("too small")
        ft = b[-128:]
        if ft[120:] != FOOTER_MAGIC or struct.unpack_from("<I", ft, 96)[0] != 128:
            fmt_err("footer magic or size")
        fmajor, fminor = struct.unpack_from("<HH", ft, 100)
        if fmajor != 1 or (fminor == 0 and any(ft[104:120])):
            fmt_err("footer version or reserved bytes")
        idx, cc, ic, ss, ms, r0, so, sz = struct.unpack_from("<8Q", ft, 0)
        if r0 or ic == 0 or ic > MAX_INODES or cc > 1 << 32 or ms > MAX_MANIFEST or ss > 1 << 32:
            fmt_err("footer counts or sizes out of range")
        index_size = 56 * cc + 48 * ic + ss + ms
        if idx < 64 or idx + index_size > U64:
            fmt_err("index offset")
        mend = idx + index_size
        end = mend
        if so or sz:
            if so != mend or sz > SIG_MAX or mend + sz > U64:
                fmt_err("signature placement or size")
            end = mend + sz
        if end != n - 128:
            fmt_err("sections do not tile the file")
        h = b[:64]
        major, minor, hsize = struct.unpack_from("<HHI", h, 8)
        incompat = struct.unpack_from("<Q", h, 24)[0]
        shift = h[32]
        if h[:8] != HEADER_MAGIC or major != 1 or hsize != 64 or incompat & ~KNOWN_INCOMPAT:
            fmt_err("header magic, version, size or incompat flags")
        if minor == 0 and any(h[33:64]):
            fmt_err("header reserved bytes")
        if not 16 <= shift <= 22:
            fmt_err("chunk shift")
        if sha256(h + ft[:48] + b[idx:mend]) != ft[64:96]:
            raise Refused("integrity_error", "root digest")
        strict = minor == 0
        cs = 1 << shift
        chunks = [dict(zip(CHUNK_FIELDS, struct.unpack_from(CHUNK_FMT, b, idx + 56 * k))) for k in range(cc)]
        first_at = {}
        for k, c in enumerate(chunks):
            if c["flags"] or c["codec"] > 1 or c["filter"] > 3:
                fmt_err(f"chunk {k}: flags, codec or filter")
            if c["filter"] and (not incompat & KNOWN_INCOMPAT or c["codec"] != 1):
                fmt_err(f"chunk {k}: filter without flag or zstd")
            if not 1 <= c["decoded"] <= cs or not 1 <= c["stored"] <= zstd_bound(cs):
                fmt_err(f"chunk {k}: sizes")
            if c["codec"] == 0 and c["stored"] != c["decoded"]:
                fmt_err(f"chunk {k}: stored sizes differ")
            if c["offset"] < 64 or c["offset"] + c["stored"] > idx:
                fmt_err(f"chunk {k}: outside the data")
            if strict and c["pad"] != b"\0" * 4:
                fmt_err(f"chunk {k}: padding")
            o = first_at.setdefault(c["offset"], c)
            if any(o[key] != c[key] for key in ("stored", "decoded", "codec", "filter", "digest")):
                fmt_err(f"chunk {k}: dedup conflict")
        it = idx + 56 * cc
        st = it + 48 * ic
        strings = b[st:st + ss]
        inodes = [dict(zip(INODE_FIELDS, struct.unpack_from(INODE_FMT, b, it + 48 * i))) for i in range(ic)]
        depth = [0] * ic
        claimed = next_chunk = 0
        for i, e in enumerate(inodes):
            bad = lambda why: fmt_err(f"inode {i}: {why}")  # noqa: E731
            if e["flags"] or (strict and (e["reserved"] or e["pad"] != b"\0\0")):
                bad("flags or reserved")
            if e["mode"] & ~(S_IFMT | 0o777) or e["kind"] > 5 or e["mtime_nsec"] >= 10 ** 9:
                bad("mode, kind or nsec")
            t = e["mode"] & S_IFMT
            if t not in (S_IFDIR, S_IFREG, S_IFLNK):
                bad("type")
            if i == 0:
                if t != S_IFDIR or e["parent"] or e["name_length"]:
                    bad("root")
            else:
                p = e["parent"]
                if p >= i or inodes[p]["mode"] & S_IFMT != S_IFDIR:
                    bad("parent")
                if e["name_offset"] + e["name_length"] > ss:
                    bad("name outside strings")
                name = strings[e["name_offset"]:e["name_offset"] + e["name_length"]]
                if valid_name(name) or (p == 0 and name == b".torshpkg"):
                    bad("name")
                depth[i] = depth[p] + 1
                if depth[i] > MAX_DEPTH:
                    bad("depth")
            if t == S_IFDIR:
                if e["size"] == 0:
                    if e["first"]:
                        bad("empty dir with first")
                    continue
                if e["first"] <= i or e["first"] + e["size"] > ic:
                    bad("children outside")
                if any(inodes[e["first"] + k]["parent"] != i for k in range(e["size"])):
                    bad("child parent")
                claimed += e["size"]
            elif t == S_IFREG:
                count = -(-e["size"] // cs)
                if count == 0:
                    if e["first"]:
                        bad("empty file with first")
                    continue
                if e["first"] != next_chunk or e["first"] + count > cc:
                    bad("chunk run")
                next_chunk += count
                for k in range(count):
                    want = cs if k + 1 < count or e["size"] % cs == 0 else e["size"] % cs
                    if chunks[e["first"] + k]["decoded"] != want:
                        bad("chunk sizes")
            else:
                target = strings[e["first"]:e["first"] + e["size"]]
                if e["first"] + e["size"] > ss or not 1 <= len(target) <= 4095 or b"\0" in target:
                    bad("symlink target")
        if claimed != ic - 1:
            fmt_err("orphans")
        for i in range(2, ic):
            a, c = inodes[i - 1], inodes[i]
            if a["parent"] == c["parent"]:
                na = strings[a["name_offset"]:a["name_offset"] + a["name_length"]]
                nc = strings[c["name_offset"]:c["name_offset"] + c["name_length"]]
                if not na < nc:
                    fmt_err("siblings not sorted or not unique")
        if next_chunk != cc:
            fmt_err("chunks belong to no file")
        check_manifest(b[st + ss:mend])
        check_signature_block(b[mend:mend + sz] if (so or sz) else b"")
        return chunks, inodes

    def read(self, b, view, decode):
        """Reads every regular file like exercise_package: a chunk failing its digest, or a zstd frame
        that does not decode to its size, is an IntegrityError. `decode`: class of the frames the
        model has not seen ("ok" or "integrity_error"); None makes such a frame an error here."""
        chunks, inodes = view
        shift = b[32]
        failed = False
        for e in inodes:
            if e["mode"] & S_IFMT != S_IFREG or e["size"] == 0:
                continue
            for k in range(-(-e["size"] >> shift)):
                c = chunks[e["first"] + k]
                if sha256(b[c["offset"]:c["offset"] + c["stored"]]) != c["digest"]:
                    failed = True
                    break
                if c["codec"] == 0 or (c["digest"], c["decoded"], c["codec"], c["filter"]) in self.known:
                    continue
                if decode is None:
                    raise Unknown("a zstd frame the model has not seen")
                if decode != "ok":
                    failed = True
                    break
        return "integrity_error" if failed else "ok"

    def expect(self, b, decode=None):
        try:
            view = self.open(b)
        except Refused as r:
            return r.cls, r.why
        return self.read(b, view, decode), "read"


# ---------------------------------------------------------------------------------------------
# The corpus

class Corpus:
    def __init__(self, outdir, model):
        self.outdir, self.model, self.cases, self.names = outdir, model, [], set()

    def add(self, name, data, intent=None, decode=None, note="", model=True, rss_budget_mib=None):
        """intent: the class the case was built to produce; checked against the model.
        rss_budget_mib: a larger memory budget than the runner's default, for a known, bounded cost."""
        assert name not in self.names, name
        self.names.add(name)
        if model:
            try:
                expect, why = self.model.expect(data, decode)
            except Unknown:
                raise SystemExit(f"gen-corpus: case {name}: say how its new zstd frame decodes (decode=...)")
            if why == "read":
                why = "opens; every file reads" if expect == "ok" else "opens; a file fails to read"
            if intent is not None and intent != expect:
                raise SystemExit(f"gen-corpus: case {name}: built for {intent}, but the model says {expect} ({why})")
        else:
            expect, why = intent, "by construction"
        with open(os.path.join(self.outdir, name + ".tpkg"), "wb") as f:
            f.write(data)
        self.cases.append({"name": name, "file": name + ".tpkg", "expect": expect, "size": len(data),
                           "note": note or why})
        if rss_budget_mib:
            self.cases[-1]["rss_budget_mib"] = rss_budget_mib

    def add_pkg(self, name, pkg, intent=None, decode=None, note=""):
        """A structural edit: the rerooted image (intent applies), then the stale-root one."""
        fresh = pkg.build(root=True)
        self.add(name, fresh, intent, decode, note)
        stale = pkg.build(root=False)
        if stale != fresh:
            self.add(name + "-stale-root", stale, None, decode, note)

    def write_index(self, base_name):
        with open(os.path.join(self.outdir, "cases.json"), "w") as f:
            json.dump({"version": 1, "base": base_name, "cases": self.cases}, f, indent=1)
            f.write("\n")


def put(b, at, fmt, v):
    b = bytearray(b)
    struct.pack_into(fmt, b, at, v)
    return bytes(b)


def reroot(b):
    """Recomputes the root over the layout the (edited) footer describes, when it lies in the file."""
    ft = b[-128:]
    idx, cc, ic, ss, ms = struct.unpack_from("<5Q", ft, 0)
    end = idx + 56 * cc + 48 * ic + ss + ms
    if idx < 64 or end > len(b) - 128:
        return None
    return b[:len(b) - 64] + sha256(b[:64] + ft[:48] + b[idx:end]) + b[len(b) - 32:]


def u64_values(v):
    return [0, U64, U64 - 63, v + 1, v - 1 if v else None, 1 << 32, 1 << 63]


def u32_values(v):
    return [0, U32, U32 - 1, v + 1, v - 1 if v else None]


def gen_whole_file(c, base):
    c.add("base-valid", base, "ok")
    c.add("empty-file", b"", "format_error")
    c.add("one-byte", b"\x89", "format_error")
    c.add("zeros-191", bytes(191), "format_error")
    c.add("zeros-4k", bytes(4096), "format_error")
    c.add("random-4k", random.Random(1).randbytes(4096), "format_error")
    c.add("footer-only", base[-128:], "format_error")
    c.add("header-and-footer-only", base[:64] + base[-128:], "format_error")
    c.add("byte-appended", base + b"\0", "format_error")
    c.add("footer-appended-twice", base + base[-128:], "format_error")
    c.add("script-prepended", b"#!/bin/sh\n" + base, "format_error")
    c.add("two-packages-concatenated", base + base, "format_error")


def gen_truncations(c, base, pkg):
    ft = dict(zip(FOOTER_FIELDS, struct.unpack_from("<8Q", base, len(base) - 128)))
    idx = ft["index_offset"]
    marks = {"header-end": 64, "chunk-table": idx, "inode-table": idx + 56 * ft["chunk_count"]}
    marks["string-table"] = marks["inode-table"] + 48 * ft["inode_count"]
    marks["manifest"] = marks["string-table"] + ft["strings_size"]
    marks["footer"] = len(base) - 128
    marks["footer-root"] = len(base) - 64
    marks["footer-magic"] = len(base) - 8
    for k, ch in enumerate(pkg.chunks):
        marks[f"chunk{k}-start"] = ch["offset"]
        marks[f"chunk{k}-end"] = ch["offset"] + ch["stored"]
    done = set()
    for label, at in marks.items():
        for delta, tag in ((-1, "minus1"), (0, "at"), (1, "plus1")):
            cut = at + delta
            if 0 <= cut < len(base) and cut not in done:
                done.add(cut)
                c.add(f"truncated-{label}-{tag}", base[:cut], "format_error", note=f"first {cut} bytes")
    # A section cut out but the footer kept: the footer's sections no longer tile the file.
    for label in ("chunk-table", "inode-table", "string-table", "manifest"):
        at = marks[label]
        c.add(f"cut-before-{label}-footer-kept", base[:at] + base[-128:], "format_error")


def gen_footer_fields(c, base):
    ft_at = len(base) - 128
    vals = dict(zip(FOOTER_FIELDS, struct.unpack_from("<8Q", base, ft_at)))
    for i, field in enumerate(FOOTER_FIELDS):
        v = vals[field]
        for x in dict.fromkeys(u64_values(v)):
            if x is None or x == v or x > U64:
                continue
            b = put(base, ft_at + 8 * i, "<Q", x)
            c.add(f"footer-{field}-{x:#x}", b)
            r = reroot(b)
            if r is not None and r != b:
                c.add(f"footer-{field}-{x:#x}-rerooted", r)
    idx, cc, ic, ss, ms = (vals[k] for k in FOOTER_FIELDS[:5])
    # Pairs whose sum wraps around 2^64 to the true layout: only overflow checks or limits catch them.
    wraps = {
        "index-offset-and-manifest-wrap": {"index_offset": idx + (1 << 63), "manifest_size": ms + (1 << 63)},
        "chunk-count-times-56-wraps": {"chunk_count": cc + (1 << 61)},
        "inode-count-times-48-wraps": {"inode_count": ic + (1 << 60)},
        "strings-and-index-offset-wrap": {"strings_size": (ss - 4096) % (1 << 64), "index_offset": idx + 4096},
        "manifest-wraps-to-index-offset": {"manifest_size": (1 << 64) - 64, "index_offset": idx + 64},
    }
    for name, fields in wraps.items():
        b = base
        for field, x in fields.items():
            b = put(b, ft_at + 8 * FOOTER_FIELDS.index(field), "<Q", x % (1 << 64))
        c.add(f"footer-{name}", b, "format_error")
    # The tables shifted by a few bytes, with the footer and root consistent with the shift.
    b = put(put(base, ft_at, "<Q", idx - 10), ft_at + 32, "<Q", ms + 10)
    c.add("footer-index-shifted-10-rerooted", reroot(b), "format_error")
    for at, fmt, x, label in ((96, "<I", 0, "footer-size-0"), (96, "<I", U32, "footer-size-max"),
                              (96, "<I", 127, "footer-size-127"), (100, "<H", 0, "footer-major-0"),
                              (100, "<H", 2, "footer-major-2"), (100, "<H", 0xFFFF, "footer-major-max")):
        c.add(label, put(base, ft_at + at, fmt, x), "format_error")
    c.add("footer-reserved-nonzero", put(base, ft_at + 110, "<B", 1), "format_error")
    # A later minor version may use the reserved bytes: accepted (and unrooted, so no digest change).
    c.add("footer-minor-1-reserved-nonzero", put(put(base, ft_at + 102, "<H", 1), ft_at + 110, "<B", 1), "ok")
    c.add("footer-magic-damaged", put(base, ft_at + 123, "<B", ord("X")), "format_error")
    c.add("footer-root-damaged", put(base, ft_at + 64, "<B", base[ft_at + 64] ^ 1), "integrity_error")


def gen_header_fields(c, base, pkg):
    def variants(name, at, fmt, x, intent=None):
        b = put(base, at, fmt, x)
        c.add(name, reroot(b), intent)
        c.add(name + "-stale-root", b)

    variants("header-magic-damaged", 1, "<B", ord("X"), "format_error")
    for x in (0, 2, 0xFFFF):
        variants(f"header-major-{x}", 8, "<H", x, "format_error")
    for x in (0, 63, 65, U32):
        variants(f"header-size-{x}", 12, "<I", x, "format_error")
    for x in (0, 15, 23, 255):
        variants(f"header-chunk-shift-{x}", 32, "<B", x, "format_error")
    variants("header-chunk-shift-17", 32, "<B", 17, "format_error")  # valid shift, wrong for the tables
    variants("header-compat-all-bits", 16, "<Q", U64, "ok")  # compat bits are ignored
    for bit in (0, 1, 3, 63):
        variants(f"header-incompat-bit{bit}", 24, "<Q", (1 << bit) | (base[24] & 4), "format_error")
    if base[24] & 4:
        variants("header-incompat-filters-cleared", 24, "<Q", 0, "format_error")  # filtered chunks need it
    variants("header-reserved-byte33", 33, "<B", 1, "format_error")
    variants("header-reserved-byte63", 63, "<B", 0x80, "format_error")
    # A later minor version may use reserved bytes (header, chunk and inode padding): accepted.
    b = bytearray(put(put(base, 10, "<H", 1), 40, "<B", 7))
    c.add("header-minor-1-reserved-nonzero", reroot(bytes(b)), "ok")
    p = pkg.clone()
    struct.pack_into("<H", p.header, 10, 1)
    p.chunks[0]["pad"] = b"\1\2\3\4"
    p.inodes[1]["reserved"] = 5
    p.inodes[1]["pad"] = b"\1\1"
    c.add_pkg("minor-1-all-padding-nonzero", p, "ok")


def chunk_roles(pkg):
    roles = {}
    for k, ch in enumerate(pkg.chunks):
        if ch["codec"] == 1 and ch["filter"] == 0:
            roles.setdefault("zstd", k)
        if ch["codec"] == 0:
            roles.setdefault("stored", k)
        if ch["filter"]:
            roles.setdefault("filtered", k)
    roles["last"] = len(pkg.chunks) - 1
    return roles


def gen_chunk_fields(c, pkg):
    cs = 1 << pkg.header[32]
    idx = 64 + len(pkg.data)
    for role, k in chunk_roles(pkg).items():
        ch = pkg.chunks[k]
        sweeps = {
            "offset": [0, 63, U64, U64 - ch["stored"] + 1, U64 - ch["stored"] + 100, idx, idx - ch["stored"] + 1,
                       idx + (1 << 20)],
            "stored": [0, U32, zstd_bound(cs) + 1, zstd_bound(cs), ch["stored"] + 1, ch["stored"] - 1],
            "decoded": [0, U32, cs + 1, cs, ch["decoded"] + 1, ch["decoded"] - 1],
            "codec": [0, 1, 2, 255],
            "filter": [0, 1, 3, 4, 255],
            "flags": [1, 0x8000],
            "pad": [b"\0\0\0\1"],
        }
        for field, values in sweeps.items():
            for x in dict.fromkeys(values):
                if x == ch[field] or (isinstance(x, int) and not 0 <= x <= CHUNK_MAX.get(field, U64)):
                    continue
                p = pkg.clone()
                p.chunks[k][field] = x
                label = x.hex() if isinstance(x, bytes) else f"{x:#x}"
                # A changed size, codec or filter breaks the packer's frame, except another filter id on
                # a filtered chunk: the same bytes then undo to a different permutation (its phase byte,
                # below 2, is valid for every width).
                decode = "ok" if role == "filtered" and field == "filter" and x in (1, 2, 3) else "integrity_error"
                c.add_pkg(f"chunk-{role}-{field}-{label}", p, decode=decode)


def gen_chunk_layout(c, pkg, base):
    roles = chunk_roles(pkg)
    idx = 64 + len(pkg.data)
    cs = 1 << pkg.header[32]
    stored, z = roles.get("stored"), roles.get("zstd")
    if stored is not None:
        s = pkg.chunks[stored]
        # Overlap a neighbour, digest fixed: the reader does not require chunks to tile the data.
        p = pkg.clone()
        p.chunks[stored]["offset"] = s["offset"] + 1
        p.chunks[stored]["digest"] = sha256(base[s["offset"] + 1:s["offset"] + 1 + s["stored"]])
        if s["offset"] + 1 + s["stored"] <= idx:
            c.add_pkg("chunks-overlap-stored-digest-fixed", p, "ok")
        p = pkg.clone()
        p.chunks[stored]["offset"] = s["offset"] + 1
        c.add_pkg("chunks-overlap-digest-stale", p, "integrity_error")
        if z is not None:
            zc = pkg.chunks[z]
            p = pkg.clone()
            p.chunks[z]["offset"] = s["offset"] + 7  # inside the stored chunk's bytes
            p.chunks[z]["digest"] = sha256(base[s["offset"] + 7:s["offset"] + 7 + zc["stored"]])
            if s["offset"] + 7 + zc["stored"] <= idx:
                c.add_pkg("chunks-overlap-zstd-over-stored-bytes", p, "integrity_error", decode="integrity_error",
                          note="digest fixed; the bytes are not a zstd frame")
            p = pkg.clone()
            p.chunks[z]["offset"] = s["offset"]  # same offset as a different entry
            c.add_pkg("chunks-same-offset-different-sizes", p, "format_error")
    # Valid deduplication: an entry copied from another with the same decoded size.
    full = [k for k, ch in enumerate(pkg.chunks) if ch["decoded"] == cs]
    if len(full) >= 2:
        p = pkg.clone()
        p.chunks[full[1]] = dict(p.chunks[full[0]])
        c.add_pkg("chunks-dedup-shared-entry", p, "ok")
    k = max(range(len(pkg.chunks)), key=lambda j: pkg.chunks[j]["stored"])  # offset + stored can wrap past 64
    big = pkg.chunks[k]
    for name, off in (("chunk-beyond-eof", len(base) + 4096), ("chunk-in-index", idx),
                      ("chunk-straddles-index", idx - big["stored"] + 1), ("chunk-in-header", 0),
                      ("chunk-offset-wraps", (1 << 64) - big["stored"] + 64)):
        p = pkg.clone()
        p.chunks[k]["offset"] = off
        c.add_pkg(name, p, "format_error")


def gen_zstd(c, pkg, base):
    roles = chunk_roles(pkg)
    cs = 1 << pkg.header[32]
    if "zstd" in roles:
        k = roles["zstd"]
        d = pkg.chunks[k]["decoded"]
        frames = {
            "zstd-decodes-larger-than-entry": zstd_rle(0x41, d + 1000),
            "zstd-decodes-larger-no-content-size": zstd_rle(0x41, d + 1000, declare=False),
            "zstd-content-size-lies-small": zstd_rle(0x41, d + 1000, declared=d),
            "zstd-decodes-smaller-than-entry": zstd_rle(0x41, d - 1),
            "zstd-bomb-1gib-declared": zstd_rle(0, 1 << 30),
            "zstd-bomb-1gib-undeclared": zstd_rle(0, 1 << 30, declare=False),
            "zstd-needs-dictionary": zstd_frame([("rle", 0x41, d)], d, dict_id=12345),
            "zstd-bad-checksum": zstd_frame([("rle", 0x41, d)], d, checksum=True),
            "zstd-skippable-frame-only": struct.pack("<II", 0x184D2A50, 8) + bytes(8),
            "zstd-window-2gib": zstd_frame([("rle", 0x41, d)], d, window_log=31),
            "zstd-garbage": random.Random(5).randbytes(1000),
            "zstd-truncated-frame": zstd_rle(0x41, d)[:-1],
        }
        for name, frame in frames.items():
            if len(frame) > zstd_bound(cs):
                continue
            p = pkg.clone()
            p.point_chunk(k, frame)
            # RLE with a window of 2 GiB is a valid frame: single-pass decoding allocates no window.
            want = "ok" if name == "zstd-window-2gib" else "integrity_error"
            c.add_pkg(name, p, want, decode=want, note="chunk digest and root fixed: the decoder's check is reached")
        p = pkg.clone()
        p.point_chunk(k, zstd_rle(0x41, d + 1000))  # digest fixed, root not
        c.add("zstd-decodes-larger-root-stale", p.build(root=False), "integrity_error", decode="integrity_error")
    if "stored" in roles:
        k = roles["stored"]
        s = pkg.chunks[k]
        raw = base[s["offset"]:s["offset"] + s["stored"]]
        # Stored bytes re-encoded as a zstd frame of raw blocks: valid, same content.
        p = pkg.clone()
        p.point_chunk(k, zstd_raw(raw), codec=1)
        c.add_pkg("zstd-raw-blocks-valid", p, "ok", decode="ok")
        # Two frames back to back (the format says one frame; the decoder accepts a sequence).
        half = len(raw) // 2
        p = pkg.clone()
        p.point_chunk(k, zstd_raw(raw[:half]) + zstd_raw(raw[half:]), codec=1)
        c.add_pkg("zstd-two-frames-concatenated", p, "ok", decode="ok")
        p = pkg.clone()
        p.chunks[k]["codec"] = 1  # raw bytes labelled zstd
        c.add_pkg("stored-bytes-labelled-zstd", p, "integrity_error", decode="integrity_error")
    if "filtered" in roles:
        k = roles["filtered"]
        d = pkg.chunks[k]["decoded"]
        width = 4 if pkg.chunks[k]["filter"] == 3 else 2
        raw = random.Random(6).randbytes(d)
        cases = {
            "filtered-valid-phase0": (zstd_raw(filtered_form(raw, width, 0)), "ok"),
            "filtered-phase-out-of-range": (zstd_raw(bytes([width + 5]) + filtered_form(raw, width, 0)[1:]),
                                            "integrity_error"),
            "filtered-decodes-to-decoded-size": (zstd_raw(raw), "integrity_error"),
            "filtered-decodes-larger": (zstd_raw(filtered_form(raw, width, 0) + b"x"), "integrity_error"),
            "filtered-empty-frame": (zstd_raw(b""), "integrity_error"),
        }
        for name, (frame, want) in cases.items():
            p = pkg.clone()
            p.point_chunk(k, frame)
            c.add_pkg(name, p, want, decode=want)


def gen_inode_fields(c, pkg):
    targets = {"root": 0}
    for i, e in enumerate(pkg.inodes):
        t = e["mode"] & S_IFMT
        if i and t == S_IFDIR:
            targets.setdefault("dir", i)
        if t == S_IFREG and e["size"] > (1 << pkg.header[32]):
            targets.setdefault("file", i)
        if t == S_IFREG and e["size"] == 0:
            targets.setdefault("empty-file", i)
        if t == S_IFLNK:
            targets.setdefault("symlink", i)
    ss = len(pkg.strings)
    for role, i in targets.items():
        e = pkg.inodes[i]
        nl = e["name_length"] or 1
        sweeps = {
            "mode": [0, U32, S_IFCHR | 0o644, S_IFDIR | 0o755, S_IFREG | 0o644, S_IFLNK | 0o777, S_IFREG | 0o4755,
                     (e["mode"] & S_IFMT) | 0o700],
            "parent": [0, U32, i, i + 1, 1],
            "name_offset": [0, U32, ss, ss - nl + 1, (1 << 32) - nl + 1],
            "name_length": [0, U32, 256, ss + 1, e["name_length"] + 1],
            "size": [0, U64, U64 - 10, e["size"] + 1, e["size"] - 1, 1 << 32],
            "first": [0, U32, (1 << 32) - max(1, e["size"]) + 1, e["first"] + 1],
            "mtime_sec": [-(1 << 63), (1 << 63) - 1],
            "mtime_nsec": [10 ** 9, U32],
            "kind": [6, 255],
            "flags": [1],
            "reserved": [1],
            "pad": [b"\0\1"],
        }
        for field, values in sweeps.items():
            for x in dict.fromkeys(values):
                if x == e[field] or (isinstance(x, int) and field != "mtime_sec" and
                                     not 0 <= x <= INODE_MAX.get(field, U64)):
                    continue
                p = pkg.clone()
                p.inodes[i][field] = x
                label = x.hex() if isinstance(x, bytes) else f"{x:#x}"
                c.add_pkg(f"inode-{role}-{field}-{label}", p)


def rename(pkg, path, new):
    p = pkg.clone()
    i = p.ino(path)
    off, ln = p.add_string(new)
    p.inodes[i]["name_offset"], p.inodes[i]["name_length"] = off, ln
    return p


def retarget(pkg, path, target):
    p = pkg.clone()
    i = p.ino(path)
    off, ln = p.add_string(target)
    p.inodes[i]["first"], p.inodes[i]["size"] = off, ln
    return p


def gen_names(c, pkg):
    first = "a.txt"  # the first child of the root (sorted), so a new name sorting first keeps the order
    bad = {
        "dotdot": b"..", "dot": b".", "slash": b"a/b", "absolute": b"/etc/passwd", "nul": b"a\0b", "empty": b"",
        "256-bytes": b"a" * 256, "utf8-invalid-ff": b"\xff", "utf8-overlong-slash": b"\xc0\xaf",
        "utf8-surrogate": b"\xed\xa0\x80", "utf8-above-10ffff": b"\xf4\x90\x80\x80", "utf8-truncated": b"a\xe2\x82",
        "torshpkg-reserved-at-root": b".torshpkg", "traversal": b"../../etc",
    }
    for label, name in bad.items():
        c.add_pkg(f"name-{label}", rename(pkg, first, name), "format_error")
    good = {"255-bytes": b"a" * 255, "three-dots": b"...", "backslash": b"a\\b", "newline": b"a\nb",
            "space": b" a"}
    for label, name in good.items():
        c.add_pkg(f"name-ok-{label}", rename(pkg, first, name), "ok")
    # Names above ASCII sort after every ASCII name: given to the last child of the root.
    last = pkg.path(max(i for i, e in enumerate(pkg.inodes) if i and e["parent"] == 0))
    for label, name in {"utf8-2-byte": "\u00e9t\u00e9".encode(), "utf8-4-byte": "\U0001F600".encode()}.items():
        c.add_pkg(f"name-ok-{label}", rename(pkg, last, name), "ok")
    c.add_pkg("name-ok-torshpkg-in-subdir", rename(pkg, "dir/c.txt", b".torshpkg"), "ok")
    c.add_pkg("name-duplicate", rename(pkg, "b.bin", b"a.txt"), "format_error")
    p = pkg.clone()
    a, bb = p.inodes[p.ino("a.txt")], p.inodes[p.ino("b.bin")]
    (a["name_offset"], a["name_length"]), (bb["name_offset"], bb["name_length"]) = \
        (bb["name_offset"], bb["name_length"]), (a["name_offset"], a["name_length"])
    c.add_pkg("name-siblings-unsorted", p, "format_error")
    # Names share string-table bytes: allowed, even between siblings of different directories.
    p = pkg.clone()
    a, cc = p.inodes[p.ino("a.txt")], p.inodes[p.ino("dir/c.txt")]
    cc["name_offset"], cc["name_length"] = a["name_offset"], a["name_length"]
    c.add_pkg("name-ok-shared-string", p, "ok")
    p = pkg.clone()
    i = p.ino("a.txt")
    p.inodes[i]["name_offset"] = len(p.strings) - 1
    p.inodes[i]["name_length"] = 2  # one byte past the string table, into the manifest
    c.add_pkg("name-runs-into-manifest", p, "format_error")


def gen_symlinks(c, pkg):
    link = "link"
    cases = {"absolute": (b"/etc/passwd", "ok"), "traversal": (b"../../../../etc/shadow", "ok"),
             "not-utf8": (b"\xff\xfe", "ok"), "4095-bytes": (b"x" * 4095, "ok"),
             "4096-bytes": (b"x" * 4096, "format_error"),
             "empty": (b"", "format_error"), "nul": (b"a\0b", "format_error"), "self": (b"link", "ok")}
    for label, (target, want) in cases.items():
        c.add_pkg(f"symlink-{label}", retarget(pkg, link, target), want)
    p = pkg.clone()
    i = p.ino(link)
    p.inodes[i]["first"] = len(p.strings) - 1
    p.inodes[i]["size"] = 2
    c.add_pkg("symlink-target-runs-into-manifest", p, "format_error")


def gen_manifest(c, pkg):
    cases = {
        "not-json": (b"this is not JSON", "format_error"), "array": (b"[1, 2]", "format_error"),
        "string": (b'"x"', "format_error"), "empty": (b"", "format_error"),
        "truncated": (pkg.manifest[:-1], "format_error"), "trailing-garbage": (pkg.manifest + b" x", "format_error"),
        "nan": (b'{"a": NaN}', "format_error"), "invalid-utf8": (b'{"a": "\xff"}', "format_error"),
        "nested-100k": (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "format_error"),
        "minimal-object": (b"{}", "ok"), "unrelated-object": (b'{"files": 3, "name": []}', "ok"),
    }
    for label, (text, want) in cases.items():
        p = pkg.clone()
        p.manifest = text
        c.add_pkg(f"manifest-{label}", p, want)


def gen_big_manifests(c, pkg):
    # 100 MB: over the 64 MiB limit, refused from the footer before anything is read or hashed.
    p = pkg.clone()
    p.manifest = b'{"x": "' + b"a" * (100_000_000 - 9) + b'"}'
    c.add("manifest-100mb", p.build(root=True), "format_error", model=False, note="manifest_size over the limit")
    p.manifest = b'{"x": "' + b"a" * (MAX_MANIFEST - 9) + b'"}'
    c.add("manifest-64mib-max-string", p.build(root=True), "ok", model=False, note="exactly at the limit")
    # Dense JSON at the limit: one structural character every 2 bytes (a DOM's worst case).
    n = (MAX_MANIFEST - 8) // 2
    p.manifest = b'{"x": [' + b"0," * (n - 1) + b"0]}"
    p.manifest += b" " * (MAX_MANIFEST - len(p.manifest))
    # The manifest reader builds no DOM (RapidJSON SAX, session 10): this legal 67 MB package peaks
    # at 260 MiB in a release build (the image, its index and the manifest held once each), where
    # session 9's simdjson DOM needed ~0.9 GB. The budget leaves room for ASan's shadow and quarantine.
    c.add("manifest-64mib-max-dense", p.build(root=True), "ok", model=False, rss_budget_mib=768,
          note="exactly at the limit; the reader's memory does not grow with the number of values")
    p.manifest += b" "
    c.add("manifest-64mib-plus-one", p.build(root=True), "format_error", model=False)


def gen_signatures(c, pkg, base):
    def signed(block, fields=None):
        p = pkg.clone()
        p.sig = block
        b = p.build(root=True)
        if fields:
            for at, x in fields.items():
                b = put(b, len(b) - 128 + at, "<Q", x % (1 << 64))
        return b

    good = sig_block([sig_entry(1)])
    mend = len(base) - 128
    c.add("sig-valid-one-entry", signed(good), "ok", note="well formed; signatures are checked by policy, not at open")
    c.add("sig-valid-64-entries", signed(sig_block([sig_entry(100 + i) for i in range(64)])), "ok")
    c.add("sig-size-field-minus1", signed(good, {56: len(good) - 1}), "format_error")
    c.add("sig-size-field-plus1", signed(good, {56: len(good) + 1}), "format_error")
    c.add("sig-size-field-zero-with-block", signed(good, {56: 0}), "format_error")
    c.add("sig-size-field-max", signed(good, {56: U64}), "format_error")
    c.add("sig-size-field-wraps", signed(good, {56: (1 << 64) - 64}), "format_error")
    c.add("sig-offset-zero-size-set", signed(good, {48: 0}), "format_error")
    c.add("sig-offset-minus1", signed(good, {48: mend - 1}), "format_error")
    c.add("sig-offset-plus1", signed(good, {48: mend + 1}), "format_error")
    c.add("sig-offset-max", signed(good, {48: U64}), "format_error")
    c.add("sig-block-without-fields", signed(good, {48: 0, 56: 0}), "format_error")
    c.add("sig-offset-set-size-zero-no-block", put(base, len(base) - 128 + 48, "<Q", mend), "ok",
          note="offset at the manifest end, size 0: an empty block")
    c.add("sig-size-set-no-block", put(base, len(base) - 128 + 56, "<Q", 120), "format_error")
    c.add("sig-block-over-max-size", signed(sig_block([sig_entry(i) for i in range(65)])), "format_error")
    c.add("sig-block-1mib", signed(random.Random(2).randbytes(1 << 20)), "format_error")
    c.add("sig-random-120-bytes", signed(random.Random(3).randbytes(120)), "format_error")
    c.add("sig-too-short", signed(SIG_MAGIC + b"\1\0"), "format_error")
    c.add("sig-bad-version", signed(sig_block([sig_entry(1)], version=2)), "format_error")
    c.add("sig-count-zero", signed(sig_block([], count=0)), "format_error")
    c.add("sig-count-mismatch", signed(sig_block([sig_entry(1)], count=2)), "format_error")
    c.add("sig-entry-size-wrong", signed(sig_block([sig_entry(1)], entry_size=100)), "format_error")
    c.add("sig-unknown-algorithm", signed(sig_block([sig_entry(1, alg=2)])), "format_error")
    c.add("sig-reserved-nonzero", signed(sig_block([sig_entry(1, r32=1)])), "format_error")
    key = random.Random(4).randbytes(32)
    c.add("sig-same-key-twice", signed(sig_block([sig_entry(1, key=key), sig_entry(2, key=key)])), "format_error")


def gen_scratch(c):
    """Trees the CLI would refuse to pack: deep chains and a million inodes."""
    def chain(levels):
        p = Pkg.scratch()
        off = p.add_string(b"d")
        p.inodes.append(inode(S_IFDIR | 0o755, 0, (0, 0), 1, 1))
        for i in range(1, levels):
            p.inodes.append(inode(S_IFDIR | 0o755, i - 1, off, 1, i + 1))
        p.inodes.append(inode(S_IFREG | 0o644, levels - 1, p.add_string(b"f")))
        return p

    c.add("deep-512-levels", chain(512).build(), "ok", note="a file at depth 512, the limit")
    c.add("deep-513-levels", chain(513).build(), "format_error")
    c.add("deep-10000-levels", chain(10_000).build(), "format_error")
    c.add("deep-1m-levels", chain(1_000_000).build(), "format_error", model=False)

    n = 1_000_000
    p = Pkg.scratch()
    p.inodes.append(inode(S_IFDIR | 0o755, 0, (0, 0), n - 1, 1))
    for i in range(1, n):
        p.inodes.append(inode(S_IFREG | 0o644, 0, p.add_string(b"%07d" % i)))
    c.add("inodes-1m-flat", p.build(), "ok", model=False, note="a million empty files in one directory")
    p.inodes[-1]["name_offset"] = p.inodes[-2]["name_offset"]
    c.add("inodes-1m-flat-last-duplicate", p.build(), "format_error", model=False)
    p = Pkg.scratch()
    p.inodes.append(inode(S_IFDIR | 0o755))
    b = p.build()
    c.add("inodes-1m-claimed-tiny-file", put(b, len(b) - 128 + 16, "<Q", n), "format_error")

    # Deduplication as amplification: one 17-byte RLE frame of 64 KiB, a million entries, 64 GiB of
    # file content. Valid; reading it all is the reader's business (exercise_package stops early).
    p = Pkg.scratch()
    frame = zstd_rle(0, K64)
    off = p.append_data(frame)
    entry = {"offset": off, "stored": len(frame), "decoded": K64, "codec": 1, "filter": 0, "flags": 0,
             "pad": b"\0" * 4, "digest": sha256(frame)}
    p.chunks = [dict(entry) for _ in range(n)]
    p.inodes = [inode(S_IFDIR | 0o755, 0, (0, 0), 1, 1), inode(S_IFREG | 0o644, 0, p.add_string(b"big"), n * K64)]
    c.add("dedup-1m-entries-64gib-file", p.build(), "ok", model=False, note="valid; 56 MB of index, 64 GiB of content")


def make_tree(d):
    rnd = random.Random(11)

    def write(rel, data):
        path = os.path.join(d, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    words = [b"weight", b"tensor", b"layer", b"norm", b"attention", b"0.125", b"token"]
    write("a.txt", b" ".join(rnd.choice(words) for _ in range(16000))[:100_000])  # 2 zstd chunks
    write("b.bin", rnd.randbytes(66_000))  # 2 stored chunks
    write("dir/c.txt", b"hello\n")
    write("dir/sub/deep/d.json", b'{"k": [1, 2, 3]}\n')
    write("empty", b"")
    os.makedirs(os.path.join(d, "emptydir"))
    os.symlink("a.txt", os.path.join(d, "link"))
    os.symlink("/etc/passwd", os.path.join(d, "abs-link"))  # absolute targets are data: valid
    # bf16 tensor of magnitudes 1..2 (two sign-and-exponent bytes, random mantissas): the packer's
    # trial picks the bf16 filter for its chunk by a wide margin.
    elems = 6000
    data = b"".join(struct.pack("<f", rnd.choice((-1, 1)) * rnd.uniform(1, 2))[2:] for _ in range(elems))
    header = b'{"w":{"dtype":"BF16","shape":[%d],"data_offsets":[0,%d]}}' % (elems, len(data))
    header += b" " * (-len(header) % 8)
    write("model.safetensors", struct.pack("<Q", len(header)) + header + data)


def pack_base(work):
    torshpkg = os.environ.get("TORSHPKG")
    if not torshpkg:
        raise SystemExit("gen-corpus: give BASE.tpkg or set TORSHPKG to the torshpkg CLI")
    src = os.path.join(work, "tree")
    make_tree(src)
    out = os.path.join(work, "base.tpkg")
    subprocess.run([torshpkg, "pack", src, "-o", out, "--chunk-size", "64K", "--threads", "1", "-q"], check=True,
                   env=dict(os.environ, SOURCE_DATE_EPOCH="1700000000"), stdin=subprocess.DEVNULL)
    return out


def gen_encrypted(c, enc):
    """Cases derived from a package encrypted for the fuzzing identity (tests/fuzz/exercise.hpp, which
    corpus_check opens with): the key block's fields, the header's encryption fields, and sealed
    bytes. The model does not decrypt: each outcome is by construction. A key block that parses but
    opens for nobody we hold makes a locked package, which exercise checks as inspect and verify do
    (structure and stored digests): "ok"."""
    ft = len(enc) - 128
    idx, cc, ic, ss, ms, _r, so, sz = struct.unpack_from("<8Q", enc, ft)
    if not (struct.unpack_from("<Q", enc, 24)[0] & 1) or so == 0 or enc[so:so + 8] != b"TPKGKEY\0":
        raise SystemExit("gen-corpus: the encrypted base has no key block")
    st, mf = idx + 56 * cc + 48 * ic, idx + 56 * cc + 48 * ic + ss
    e0 = so + 16  # the first (only) key block entry

    def case(name, data, expect, note):
        c.add("enc-" + name, data, expect, note=note, model=False)

    def with_tail(tail):
        f = bytearray(enc[ft:])
        struct.pack_into("<QQ", f, 48, so, len(tail))
        return enc[:so] + tail + bytes(f)

    key_block = enc[so:so + 16 + 128]
    case("base", enc, "ok", "encrypted for the fuzzing identity: every file decrypts and reads")
    case("key-block-magic", put(enc, so + 1, "<B", enc[so + 1] ^ 1), "format_error", "key block magic")
    case("key-block-version-2", put(enc, so + 8, "<H", 2), "format_error", "key block version")
    case("key-block-count-0", put(enc, so + 10, "<H", 0), "format_error", "no entries")
    case("key-block-count-2-cut-short", put(enc, so + 10, "<H", 2), "format_error", "count past the tail")
    case("key-block-count-65", put(enc, so + 10, "<H", 65), "format_error", "more than 64 entries")
    case("key-block-entry-size-127", put(enc, so + 12, "<I", 127), "format_error", "entry size")
    case("key-entry-type-9", put(enc, e0, "<H", 9), "format_error", "unknown entry type")
    case("key-entry-reserved", put(enc, e0 + 5, "<B", 1), "format_error", "reserved bytes")
    case("key-entry-tail-reserved", put(enc, e0 + 127, "<B", 1), "format_error", "reserved bytes at the end")
    case("key-entry-x25519-with-work-factor", put(enc, e0 + 2, "<B", 12), "format_error", "x25519 entry with log_n")
    case("no-key-block", with_tail(b""), "format_error", "an encrypted package without its key block")
    case("key-block-twice-the-same-recipient",
         with_tail(put(key_block[:16], 10, "<H", 2) + key_block[16:] * 2), "format_error", "one recipient twice")
    case("key-entry-other-recipient", put(enc, e0 + 8, "<B", enc[e0 + 8] ^ 1), "ok",
         "not for the fuzzing identity: opens locked")
    case("key-entry-wrapped-flipped", put(enc, e0 + 80, "<B", enc[e0 + 80] ^ 1), "ok",
         "the wrapped key does not open (its tag): locked")
    case("key-entry-ephemeral-flipped", put(enc, e0 + 45, "<B", enc[e0 + 45] ^ 1), "ok",
         "another shared secret: does not open, locked")
    case("key-entry-ephemeral-zero", enc[:e0 + 40] + bytes(32) + enc[e0 + 72:], "ok",
         "a low-order ephemeral key (all-zero shared secret): refused by X25519, locked")
    scrypt = struct.pack("<HBB", 2, 22, 0) + bytes(4) + random.Random(9).randbytes(16) + bytes(16) + bytes(32) + \
        random.Random(10).randbytes(48) + bytes(8)
    case("key-block-scrypt-2-22-no-passphrase", with_tail(put(key_block[:16], 10, "<H", 2) + key_block[16:] + scrypt), "ok",
         "a passphrase entry of the largest work factor costs nothing without a passphrase")
    big = put(key_block[:16], 10, "<H", 64) + key_block[16:] + b"".join(
        struct.pack("<H", 1) + bytes(6) + random.Random(100 + i).randbytes(112) + bytes(8) for i in range(63))
    case("key-block-64-entries", with_tail(big), "ok", "64 entries, ours first")
    case("key-block-64-entries-ours-last", with_tail(put(big[:16], 10, "<H", 64) + big[16 + 128:] + key_block[16:]),
         "ok", "64 entries, ours last")
    case("key-block-65-entries", with_tail(put(big, 10, "<H", 65) + big[16 + 128:16 + 256]), "format_error",
         "65 entries")

    def rooted(name, data, expect, note, stale="integrity_error"):
        r = reroot(data)
        if r is not None:
            case(name, r, expect, note)
        case(name + "-stale-root", data, stale, "root digest mismatch" if stale == "integrity_error" else note)

    rooted("header-key-check-flipped", put(enc, 50, "<B", enc[50] ^ 1), "integrity_error",
           "the key block opens to a key the header does not check: a forged key block")
    # The header is decoded before the root is checked: these are format errors either way.
    rooted("header-cipher-2", put(enc, 33, "<B", 2), "format_error", "unknown cipher", "format_error")
    rooted("header-crypt-flags-2", put(enc, 34, "<B", enc[34] | 2), "format_error", "unknown encryption flag",
           "format_error")
    rooted("header-reserved-36", put(enc, 36, "<B", 1), "format_error", "reserved header bytes", "format_error")
    rooted("sealed-strings-flipped", put(enc, st + ss // 2, "<B", enc[st + ss // 2] ^ 1), "integrity_error",
           "the string table does not open")
    rooted("sealed-strings-nonce-flipped", put(enc, st + 1, "<B", enc[st + 1] ^ 1), "integrity_error",
           "the string table's nonce")
    rooted("sealed-manifest-tag-flipped", put(enc, mf + ms - 1, "<B", enc[mf + ms - 1] ^ 1), "integrity_error",
           "the manifest's tag")
    # A sealed chunk with one byte flipped: its digest fails; with the digest recomputed (what an
    # attacker without the key can do to an unsigned package) the tag fails instead.
    off, stored = struct.unpack_from("<QI", enc, idx)
    flipped = bytearray(put(enc, off + stored // 2, "<B", enc[off + stored // 2] ^ 1))
    case("sealed-chunk-flipped", bytes(flipped), "integrity_error", "fails its digest at read")
    flipped[idx + 24:idx + 56] = sha256(bytes(flipped[off:off + stored]))
    rooted("sealed-chunk-flipped-digest-recomputed", bytes(flipped), "integrity_error", "fails its tag at read")
    relabel = bytearray(enc)
    relabel[idx + 16] ^= 1  # zstd <-> stored: the associated data no longer matches
    # zstd relabelled stored: its sizes no longer fit (rule 12); stored relabelled zstd: the tag fails.
    rooted("sealed-chunk-relabelled-codec", bytes(relabel), "format_error" if enc[idx + 16] == 1 else "integrity_error",
           "another codec than it was sealed for")


def main():
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--make-tree":
        make_tree(args[1])
        return
    enc_base = None
    if len(args) == 3:  # an encrypted base (run_corpus.py packs it for the fuzzing identity)
        with open(args.pop(), "rb") as f:
            enc_base = f.read()
    if len(args) not in (1, 2) or args[0].startswith("-"):
        raise SystemExit(__doc__.strip().splitlines()[2].strip() + "\n" + __doc__.strip().splitlines()[3].strip())
    outdir = args[0]
    work = tempfile.mkdtemp(prefix="torshpkg-corpus-")
    try:
        base_path = args[1] if len(args) == 2 else pack_base(work)
        with open(base_path, "rb") as f:
            base = f.read()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    pkg = Pkg(base)
    if pkg.sig or base != pkg.build(root=False) or base != pkg.build(root=True):
        raise SystemExit("gen-corpus: the base package must be unsigned and laid out as the writer does")
    known = {(ch["digest"], ch["decoded"], ch["codec"], ch["filter"]) for ch in pkg.chunks if ch["codec"] == 1}
    model = Model(known)
    if model.expect(base) != ("ok", "read"):
        raise SystemExit(f"gen-corpus: the model refuses the base package: {model.expect(base)}")
    roles = chunk_roles(pkg)
    for need in ("zstd", "stored", "filtered"):
        if need not in roles:
            print(f"gen-corpus: warning: the base has no {need} chunk; those cases are skipped", file=sys.stderr)
    if os.path.isdir(outdir):
        shutil.rmtree(outdir)
    os.makedirs(outdir)
    c = Corpus(outdir, model)
    gen_whole_file(c, base)
    gen_truncations(c, base, pkg)
    gen_footer_fields(c, base)
    gen_header_fields(c, base, pkg)
    gen_chunk_fields(c, pkg)
    gen_chunk_layout(c, pkg, base)
    gen_zstd(c, pkg, base)
    gen_inode_fields(c, pkg)
    gen_names(c, pkg)
    gen_symlinks(c, pkg)
    gen_manifest(c, pkg)
    gen_signatures(c, pkg, base)
    gen_scratch(c)
    gen_big_manifests(c, pkg)
    if enc_base is not None:
        gen_encrypted(c, enc_base)
    c.write_index("base-valid")
    counts = {}
    for case in c.cases:
        counts[case["expect"]] = counts.get(case["expect"], 0) + 1
    print(f"gen-corpus: {len(c.cases)} cases in {outdir} (" +
          ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ")")


if __name__ == "__main__":
    main()
