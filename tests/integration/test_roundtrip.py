#!/usr/bin/env python3
"""Round trip: pack a tree full of edge cases plus a 1 GiB bf16 model and 10,000 small files, mount it,
and check that every byte, mode, mtime, link and xattr reads back as packed; then the same with
64 KiB chunks, through `extract`, `cat` and `verify`.

Environment: TORSHPKG, MOUNT_TORSHPKG, GEN_MODEL (set by meson), optionally TORSHPKG_TEST_TMPDIR,
TORSHPKG_TEST_WEIGHTS (default 1G) and TORSHPKG_TEST_SMALL_FILES (default 10000) for quicker runs.
"""
import hashlib
import json
import mmap
import os
import random
import stat
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tpkgtest import (Harness, compare_stats, inspect_json, is_mounted, mount_procs, sha256_file,  # noqa: E402
                      tail, walk)

WEIGHTS = os.environ.get("TORSHPKG_TEST_WEIGHTS", "1G")
SMALL_FILES = os.environ.get("TORSHPKG_TEST_SMALL_FILES", "10000")
K64 = 64 << 10
M1 = 1 << 20
BOUNDARY_SIZES = {"k64-minus-1.bin": K64 - 1, "k64.bin": K64, "k64-plus-1.bin": K64 + 1,
                  "m1-minus-1.bin": M1 - 1, "m1.bin": M1, "m1-plus-1.bin": M1 + 1, "m2-plus-3.bin": 2 * M1 + 3}
KIND_OF = {"model/model.safetensors": "weights", "model/config.json": "config", "model/tokenizer.json": "tokenizer",
           "model/vocab.json": "tokenizer", "model/merges.txt": "tokenizer", "model/modeling_torsh.py": "code",
           "edge/données/模型-ü.json": "config"}


def write(path, data, mode=None, mtime_ns=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def build_edge_tree(root: str, rnd: random.Random) -> None:
    """Every awkward case the format must carry."""
    write(f"{root}/empty.txt", b"")
    os.makedirs(f"{root}/emptydir")
    write(f"{root}/nested/a/b/c/d/deep.txt", b"deep inside\n" * 7)
    write(f"{root}/nested/a/sibling.json", b'{"x": 1}\n')
    os.symlink("nested/a/b/c/d/deep.txt", f"{root}/rel-link")
    os.symlink("nested/a", f"{root}/dir-link")
    os.symlink("../../sibling.json", f"{root}/nested/a/b/c/up-link")
    os.symlink("/etc/hostname", f"{root}/abs-link")
    os.symlink("does/not/exist", f"{root}/dangling-link")
    write(f"{root}/données/模型-ü.json", json.dumps({"名前": "モデル", "ü": "ß"}, ensure_ascii=False).encode())
    write(f"{root}/données/espace dans le nom.txt", b"spaces\n")
    write(f"{root}/with'quote\"and\\back.txt", b"quotes\n")
    for name, size in BOUNDARY_SIZES.items():
        write(f"{root}/chunks/{name}", rnd.randbytes(size))
    # compressible and repetitive data in several chunks (dedup inside one file)
    write(f"{root}/chunks/repeated.bin", (b"0123456789abcdef" * 4096) * 48)
    write(f"{root}/modes/private", b"secret\n", mode=0o600)
    write(f"{root}/modes/script.sh", b"#!/bin/sh\necho hi\n", mode=0o755)
    write(f"{root}/modes/readonly", b"ro\n", mode=0o444)
    write(f"{root}/modes/world", b"rw\n", mode=0o666)
    write(f"{root}/modes/none", b"none\n", mode=0o000)
    os.makedirs(f"{root}/modes/private-dir/inner")
    os.chmod(f"{root}/modes/private-dir", 0o700)
    write(f"{root}/times/ns.txt", b"ns\n", mtime_ns=1_700_000_000_123_456_789)
    write(f"{root}/times/old.txt", b"1969\n", mtime_ns=-86_400_000_000_007)
    write(f"{root}/times/future.txt", b"2100\n", mtime_ns=4_102_444_800_999_999_999)
    os.utime(f"{root}/rel-link", ns=(1_600_000_000_000_000_001,) * 2, follow_symlinks=False)


def fix_dir_mtimes(root: str) -> None:
    """Give every directory a distinct ns mtime once its contents exist (deepest first)."""
    dirs = [d for d, _, _ in os.walk(root)]
    for i, d in enumerate(sorted(dirs, key=lambda p: -p.count(os.sep))):
        os.utime(d, ns=(1_650_000_000_000_000_000 + i * 1_000_003,) * 2)


def random_reads(h, label, src_path, mnt_path, chunk, threads=8, reads=60, max_len=3 * M1):
    size = os.path.getsize(src_path)
    errors = []
    done = [0]
    lock = threading.Lock()

    def worker(tid):
        rnd = random.Random(1000 + tid)
        fs = os.open(src_path, os.O_RDONLY)
        fm = os.open(mnt_path, os.O_RDONLY)
        try:
            for i in range(reads):
                if i % 3 == 0:  # straddle a chunk boundary
                    b = rnd.randrange(1, max(2, size // chunk)) * chunk
                    off = max(0, b - rnd.randrange(1, 4097))
                    n = rnd.randrange(2, 8193) + (b - off)
                elif i % 3 == 1:
                    off = rnd.randrange(0, size)
                    n = rnd.randrange(1, max_len)
                else:  # near the end, possibly past it
                    off = max(0, size - rnd.randrange(1, 3 * chunk))
                    n = rnd.randrange(1, 4 * chunk)
                want = os.pread(fs, n, off)
                got = b""
                while len(got) < n:  # a FUSE read may return short; read like a program would
                    part = os.pread(fm, n - len(got), off + len(got))
                    if not part:
                        break
                    got += part
                if got != want:
                    with lock:
                        errors.append(f"thread {tid}: [{off}, +{n}) got {len(got)} bytes, want {len(want)}"
                                      f"{' (content differs)' if len(got) == len(want) else ''}")
                with lock:
                    done[0] += len(got)
        except OSError as e:
            with lock:
                errors.append(f"thread {tid}: {e}")
        finally:
            os.close(fs)
            os.close(fm)

    t0 = time.monotonic()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + 240
    for t in ts:
        t.join(max(0.1, deadline - time.monotonic()))
    hung = any(t.is_alive() for t in ts)
    if hung:  # wake the blocked readers so that the test can go on and report
        h.abort_mounts("random reads hung")
        for t in ts:
            t.join(30)
    dt = time.monotonic() - t0
    h.check(f"{label}: {threads} threads x {reads} random reads (chunk-crossing, tail) match the source",
            not errors and not hung, ("hung; " if hung else "") + "; ".join(errors[:5]))
    h.note(f"{done[0] / 2**20:.0f} MiB in {dt:.1f} s")


def alive(h, label, mnt):
    """The daemon still runs and the mount answers; if not, further checks on it are pointless."""
    procs = mount_procs(mnt)
    try:
        os.statvfs(mnt)
        err = None
    except OSError as e:
        err = e
    return h.check(f"{label}: the daemon is alive and the mount answers",
                   procs and err is None, f"daemon pids {procs}, statvfs: {err}")


def mmap_slices(h, label, src_path, mnt_path, chunk, count=200):
    rnd = random.Random(7)
    size = os.path.getsize(src_path)
    bad = []
    try:
        with open(src_path, "rb") as fs, open(mnt_path, "rb") as fm:
            ms = mmap.mmap(fs.fileno(), 0, prot=mmap.PROT_READ)
            mm = mmap.mmap(fm.fileno(), 0, prot=mmap.PROT_READ)
            try:
                h.check(f"{label}: mmap length equals the size", len(mm) == size, f"{len(mm)} != {size}")
                for i in range(count):
                    if i % 2:
                        b = rnd.randrange(1, max(2, size // chunk)) * chunk
                        off = max(0, b - rnd.randrange(1, 5000))
                    else:
                        off = rnd.randrange(0, size)
                    n = min(size - off, rnd.randrange(1, 2 * chunk))
                    if mm[off:off + n] != ms[off:off + n]:
                        bad.append(f"[{off}, +{n})")
                if mm[size - 1:] != ms[size - 1:]:
                    bad.append("last byte")
            finally:
                mm.close()
                ms.close()
    except (OSError, ValueError) as e:
        bad.append(str(e))
    h.check(f"{label}: {count} random mmap slices match the source", not bad, ", ".join(bad[:5]))


def check_xattrs(h, label, src, mnt, manifest):
    files = [p for p in walk(src) if p and stat.S_ISREG(os.lstat(os.path.join(src, p)).st_mode)]
    problems = []
    codecs = {}
    for rel in files:
        try:
            x = {k: os.getxattr(os.path.join(mnt, rel), "user.torshpkg." + k).decode()
                 for k in ("kind", "sha256", "codec", "stored_size")}
        except OSError as e:
            problems.append(f"{rel}: {e}")
            continue
        want_sha = sha256_file(os.path.join(src, rel))
        m = manifest.get("files", {}).get(rel, {})
        size = os.path.getsize(os.path.join(src, rel))
        codecs[x["codec"]] = codecs.get(x["codec"], 0) + 1
        if x["sha256"] != want_sha:
            problems.append(f"{rel}: sha256 xattr {x['sha256']} != {want_sha}")
        if m.get("sha256") != want_sha:
            problems.append(f"{rel}: manifest sha256 {m.get('sha256')} != {want_sha}")
        if m.get("size") != size:
            problems.append(f"{rel}: manifest size {m.get('size')} != {size}")
        if x["kind"] != m.get("kind"):
            problems.append(f"{rel}: kind xattr {x['kind']} != manifest {m.get('kind')}")
        if rel in KIND_OF and x["kind"] != KIND_OF[rel]:
            problems.append(f"{rel}: kind {x['kind']}, expected {KIND_OF[rel]}")
        if not x["stored_size"].isdigit():
            problems.append(f"{rel}: stored_size {x['stored_size']!r} is not decimal")
        want_codecs = ("none",) if size == 0 else ("zstd", "stored", "zstd+stored")
        if x["codec"] not in want_codecs:
            problems.append(f"{rel}: codec {x['codec']!r} for {size} bytes")
        if size == 0 and x["stored_size"] != "0":
            problems.append(f"{rel}: empty file with stored_size {x['stored_size']}")
    h.check(f"{label}: xattrs kind/sha256/codec/stored_size of all {len(files)} files "
            "(sha256 = hashlib of the source, kind = manifest)", not problems,
            f"{len(problems)} problems, e.g. " + "; ".join(problems[:6]))
    h.note(f"codecs: {codecs}")
    return files


def check_getfattr(h, label, mnt, rel, expect: dict):
    r = h.run(["getfattr", "--absolute-names", "-d", "-m", "^user\\.torshpkg\\.", "-e", "text",
               os.path.join(mnt, rel)], timeout=30)
    got = {}
    for line in r.stdout.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            got[k] = v.strip('"')
    missing = {k: v for k, v in expect.items() if got.get(k) != v}
    h.check(f"{label}: getfattr -d {rel or '/'} shows {sorted(expect)}", r.returncode == 0 and not missing,
            f"exit {r.returncode}, got {got}, {tail(r.stderr)}")


def mount_checks(h, label, pkg, src, mnt, info, big_rel, chunk):
    t = time.monotonic()
    rc, log = h.mount(pkg, mnt)
    mounted_now = os.path.ismount(mnt)
    h.check(f"{label}: mount.torshpkg exits 0 and the mount is there when it returns",
            rc == 0 and mounted_now, f"exit {rc}, ismount {mounted_now}: {tail(log)}")
    if not mounted_now:
        return
    h.note(f"mounted in {time.monotonic() - t:.2f} s")
    top = sorted(os.listdir(mnt))
    h.check(f"{label}: readdir of the root hides .torshpkg", ".torshpkg" not in top, f"{top}")
    h.check(f"{label}: readdir of the root equals the source's", top == sorted(os.listdir(src)),
            f"{top} vs {sorted(os.listdir(src))}")

    big = big_rel or max((p for p in walk(src) if p and os.path.isfile(os.path.join(src, p))
                          and not os.path.islink(os.path.join(src, p))),
                         key=lambda p: os.path.getsize(os.path.join(src, p)))
    # on the fresh mount, before diff fills the page cache
    random_reads(h, f"{label} {big}", os.path.join(src, big), os.path.join(mnt, big), chunk)
    mmap_slices(h, f"{label} {big}", os.path.join(src, big), os.path.join(mnt, big), chunk)
    if not alive(h, label, mnt):
        return

    t = time.monotonic()
    r = h.run(["diff", "-r", "--no-dereference", src, mnt], timeout=900)
    h.check(f"{label}: diff -r --no-dereference SRC MNT", r.returncode == 0,
            f"exit {r.returncode}: {tail(r.stdout + r.stderr)}")
    h.note(f"diff -r took {time.monotonic() - t:.1f} s")
    if not alive(h, f"{label} after diff -r", mnt):
        return
    if big_rel:
        t = time.monotonic()
        r = h.run(["cmp", os.path.join(src, big_rel), os.path.join(mnt, big_rel)], timeout=600)
        h.check(f"{label}: cmp {big_rel}", r.returncode == 0, f"exit {r.returncode}: {tail(r.stdout + r.stderr)}")
        h.note(f"cmp of {os.path.getsize(os.path.join(src, big_rel)) / 2**20:.0f} MiB took "
               f"{time.monotonic() - t:.1f} s")
    for name in BOUNDARY_SIZES:
        rel = f"edge/chunks/{name}" if os.path.isdir(os.path.join(src, "edge")) else f"chunks/{name}"
        r = h.run(["cmp", os.path.join(src, rel), os.path.join(mnt, rel)], timeout=60)
        h.check(f"{label}: cmp {rel} ({BOUNDARY_SIZES[name]} bytes)", r.returncode == 0, tail(r.stdout + r.stderr))

    compare_stats(h, label, src, mnt, uid=os.getuid(), gid=os.getgid(), nlink=True)

    manifest = info.get("manifest", {}) if info else {}
    files = check_xattrs(h, label, src, mnt, manifest)
    sample = [f for f in files if f.endswith(("empty.txt", ".safetensors", "模型-ü.json", "config.json"))][:5]
    for rel in sample:
        check_getfattr(h, label, mnt, rel, {"user.torshpkg.sha256": sha256_file(os.path.join(src, rel)),
                                            "user.torshpkg.kind": manifest["files"][rel]["kind"]})
    if info:
        check_getfattr(h, label, mnt, "", {"user.torshpkg.name": manifest.get("name"),
                                           "user.torshpkg.version": manifest.get("version"),
                                           "user.torshpkg.root_sha256": info.get("root_sha256")})

    r = h.run(["cat", os.path.join(mnt, ".torshpkg", "manifest.json")], timeout=30)
    try:
        mj = json.loads(r.stdout)
    except ValueError as e:
        mj = None
        h.note(f"manifest.json does not parse: {e}")
    h.check(f"{label}: cat MNT/.torshpkg/manifest.json parses and equals inspect --json's manifest",
             r.returncode == 0 and mj is not None and info is not None and mj == info["manifest"],
             f"exit {r.returncode}: {tail(r.stderr)}")
    try:
        mode = os.stat(os.path.join(mnt, ".torshpkg")).st_mode
    except OSError as e:
        mode = e
    h.check(f"{label}: MNT/.torshpkg is a directory", isinstance(mode, int) and stat.S_ISDIR(mode), f"{mode}")
    if not alive(h, label, mnt):
        return

    # read-only
    for what, fn in (("create a file", lambda: open(os.path.join(mnt, "new-file"), "wb")),
                     ("write an existing file", lambda: open(os.path.join(mnt, "edge/empty.txt"
                                                             if os.path.isdir(os.path.join(src, "edge")) else
                                                             "empty.txt"), "r+b")),
                     ("mkdir", lambda: os.mkdir(os.path.join(mnt, "newdir"))),
                     ("write the manifest", lambda: open(os.path.join(mnt, ".torshpkg/manifest.json"), "r+b"))):
        try:
            fn().close()
            err = None
        except OSError as e:
            err = e
        h.check(f"{label}: {what} fails (read-only)", err is not None, "it succeeded")
    try:
        sv = os.statvfs(mnt)
        h.check(f"{label}: statvfs reports ST_RDONLY", sv.f_flag & os.ST_RDONLY, f"f_flag {sv.f_flag:#x}")
        h.check(f"{label}: statvfs reports a size", sv.f_blocks * sv.f_frsize > 0, f"{sv}")
    except OSError as e:
        h.check(f"{label}: statvfs", False, str(e))


    t = time.monotonic()
    r = h.run(["fusermount3", "-u", mnt], timeout=60)
    h.check(f"{label}: fusermount3 -u exits 0 and the mount is gone",
            r.returncode == 0 and not is_mounted(mnt), f"exit {r.returncode}: {tail(r.stderr)}")
    deadline = time.monotonic() + 10
    while mount_procs(mnt) and time.monotonic() < deadline:
        time.sleep(0.1)
    h.check(f"{label}: the mount.torshpkg daemon exits after unmount", not mount_procs(mnt),
            f"still running: {mount_procs(mnt)}")
    h.note(f"unmount took {time.monotonic() - t:.2f} s")


def extract_checks(h, label, pkg, src, dest):
    t = time.monotonic()
    r = h.tpkg("extract", pkg, dest, timeout=900)
    h.check(f"{label}: torshpkg extract exits 0", r.returncode == 0, f"exit {r.returncode}: {tail(r.stderr)}")
    h.note(f"extract took {time.monotonic() - t:.1f} s")
    if r.returncode != 0:
        return
    r = h.run(["diff", "-r", "--no-dereference", src, dest], timeout=900)
    h.check(f"{label}: diff -r --no-dereference SRC EXTRACTED", r.returncode == 0,
            f"exit {r.returncode}: {tail(r.stdout + r.stderr)}")
    compare_stats(h, f"{label} extracted", src, dest)


def page_cache_bytes(path):
    """Bytes of `path` resident in the page cache (fincore), or -1."""
    r = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path], capture_output=True, text=True)
    try:
        return int(r.stdout.split()[0])
    except (IndexError, ValueError):
        return -1


def decoded_bytes(mnt):
    """bytes_decoded from the mount's .torshpkg/stats, or -1."""
    try:
        with open(os.path.join(mnt, ".torshpkg", "stats")) as f:
            return int(json.load(f)["bytes_decoded"])
    except (OSError, ValueError, KeyError):
        return -1


def random_prefetch_checks(h, pkg, rel, mnt):
    """A file read at random (three jumps on one descriptor) is decoded whole into the page cache in
    the background; with -o random_prefetch=0 only the chunks read are."""
    for opts, whole in (((), True), (("-o", "random_prefetch=0"), False)):
        label = "random_prefetch " + ("default" if whole else "=0")
        rc, log = h.mount(pkg, mnt, *opts)
        if not h.check(f"{label}: mounts", rc == 0, tail(log)):
            return
        path = os.path.join(mnt, rel)
        size = os.path.getsize(path)
        fd = os.open(path, os.O_RDONLY)
        try:
            for frac in (0.7, 0.2, 0.5, 0.9):
                os.pread(fd, 4096, int(size * frac) // 4096 * 4096)
            deadline = time.monotonic() + (120 if whole else 2)
            decoded, res = decoded_bytes(mnt), page_cache_bytes(path)
            while time.monotonic() < deadline and (decoded < size or res < size):
                time.sleep(0.2)
                decoded, res = decoded_bytes(mnt), page_cache_bytes(path)
        finally:
            os.close(fd)
        if whole:
            # The daemon must decode and push every chunk (the first check); what stays resident is
            # the kernel's choice under memory pressure: 97% (CI, session 8), 80% (clean-clone CI,
            # session 10), 54% (session 10, two integration tests at once). Half is required.
            h.check(f"{label}: after 4 random reads the daemon decodes the whole {size >> 20} MiB file",
                    decoded >= size, f"{decoded} of {size} bytes decoded")
            h.check(f"{label}: ... and it lands in the page cache", res >= size // 2,
                    f"{res} of {size} bytes resident")
        else:
            h.check(f"{label}: only about the chunks read are in the page cache", 0 < res <= 8 * M1,
                    f"{res} of {size} bytes resident")
        h.unmount(mnt)
    # A sequential reader is no random reader: the kernel's read-ahead requests reach the daemon on
    # several threads, slightly out of order, and must not start the whole-file decode. Reordering
    # is timing-dependent (the old detector misfired in about half of the 256 MiB reads), so three
    # fresh mounts each read half the file.
    worst = 0
    for _ in range(3):
        rc, log = h.mount(pkg, mnt)
        if not h.check("sequential reader: mounts", rc == 0, tail(log)):
            return
        path = os.path.join(mnt, rel)
        size = os.path.getsize(path)
        half = size // 2 // M1
        r = h.run(["dd", f"if={path}", "of=/dev/null", "bs=1M", f"count={half}", "status=none"], timeout=300)
        time.sleep(1.0)
        res = page_cache_bytes(path) if r.returncode == 0 else -1
        worst = res if res < 0 or worst < 0 else max(worst, res)
        h.unmount(mnt)
    h.check(f"sequential reader: dd of the first {half} MiB, three times, leaves about that much in the page cache",
            0 < worst <= (half + 16) * M1, f"worst {worst} of {size} bytes resident")


def main():
    with Harness("roundtrip", deadline=1500) as h:
        rnd = random.Random(42)
        src = os.path.join(h.tmp, "src")
        h.section("building the source tree")
        h.gen_model(os.path.join(src, "model"), "--weights-size", WEIGHTS, "--small-files", SMALL_FILES,
                    "--seed", "3", timeout=600)
        build_edge_tree(os.path.join(src, "edge"), rnd)
        fix_dir_mtimes(src)
        nfiles = sum(1 for p in walk(src) if p and stat.S_ISREG(os.lstat(os.path.join(src, p)).st_mode))
        raw = sum(os.lstat(os.path.join(src, p)).st_size for p in walk(src)
                  if p and stat.S_ISREG(os.lstat(os.path.join(src, p)).st_mode))
        h.note(f"{nfiles} files, {raw / 2**20:.0f} MiB")

        h.section("pack (1 MiB chunks)")
        pkg = os.path.join(h.tmp, "all.tpkg")
        t = time.monotonic()
        r = h.tpkg("pack", src, "-o", pkg, "--name", "roundtrip-model", "--version", "1.2.3-rc.1+build.5",
                   "--description", "round trip", "--author", "A. Tester", "--license", "Apache-2.0", "-q",
                   timeout=900)
        h.check("pack of the whole tree exits 0", r.returncode == 0 and os.path.isfile(pkg),
                f"exit {r.returncode}: {tail(r.stderr)}")
        h.note(f"pack took {time.monotonic() - t:.1f} s, {os.path.getsize(pkg) / 2**20 if os.path.exists(pkg) else 0:.0f} MiB")
        if r.returncode != 0:
            return
        info = inspect_json(h, pkg)
        if info:
            h.check("inspect: file count and raw_bytes match the source",
                    info.get("files") == nfiles and info.get("raw_bytes") == raw,
                    f"files {info.get('files')} vs {nfiles}, raw {info.get('raw_bytes')} vs {raw}")
            h.check("inspect: chunk_size is 1 MiB", info.get("chunk_size") == M1, f"{info.get('chunk_size')}")

        h.section("pack (64 KiB chunks) of the edge-case tree")
        pkg64 = os.path.join(h.tmp, "edge64k.tpkg")
        r = h.tpkg("pack", os.path.join(src, "edge"), "-o", pkg64, "--chunk-size", "64K", "-q", timeout=300)
        h.check("pack --chunk-size 64K exits 0", r.returncode == 0, f"exit {r.returncode}: {tail(r.stderr)}")
        info64 = inspect_json(h, pkg64) if r.returncode == 0 else None
        if info64:
            h.check("inspect: chunk_size is 64 KiB", info64.get("chunk_size") == K64, f"{info64.get('chunk_size')}")

        h.section("mount of the whole tree")
        mount_checks(h, "mount 1M", pkg, src, os.path.join(h.tmp, "mnt"), info, "model/model.safetensors", M1)
        h.section("random readers: the whole file is decoded into the page cache in the background")
        random_prefetch_checks(h, pkg, "model/model.safetensors", os.path.join(h.tmp, "mnt-rp"))
        if info64:
            h.section("mount of the 64 KiB package")
            mount_checks(h, "mount 64K", pkg64, os.path.join(src, "edge"), os.path.join(h.tmp, "mnt64"), info64,
                         None, K64)

        h.section("extract, cat, verify")
        extract_checks(h, "extract 1M", pkg, src, os.path.join(h.tmp, "extracted"))
        if info64:
            extract_checks(h, "extract 64K", pkg64, os.path.join(src, "edge"), os.path.join(h.tmp, "extracted64"))
        for rel in ("model/config.json", "edge/chunks/m1-plus-1.bin", "edge/données/模型-ü.json", "edge/empty.txt"):
            r = h.tpkg("cat", pkg, rel, binary=True, timeout=120)
            with open(os.path.join(src, rel), "rb") as f:
                want = f.read()
            h.check(f"torshpkg cat {rel} equals the source", r.returncode == 0 and r.stdout == want,
                    f"exit {r.returncode}, {len(r.stdout)} vs {len(want)} bytes: {tail(r.stderr)}")
        r = h.tpkg("cat", pkg, "edge/rel-link", binary=True)
        with open(os.path.join(src, "edge/nested/a/b/c/d/deep.txt"), "rb") as f:
            want = f.read()
        h.check("torshpkg cat of a relative symlink gives its target's bytes", r.returncode == 0 and r.stdout == want,
                f"exit {r.returncode}: {tail(r.stderr)}")
        r = h.tpkg("cat", pkg, "model/model.safetensors", binary=True, timeout=600)
        h.check("torshpkg cat of the 1 GiB model has the source's sha256",
                r.returncode == 0 and hashlib.sha256(r.stdout).hexdigest() ==
                sha256_file(os.path.join(src, "model/model.safetensors")), f"exit {r.returncode}: {tail(r.stderr)}")
        del r
        for p in (pkg, pkg64):
            t = time.monotonic()
            r = h.tpkg("verify", p, timeout=600)
            h.check(f"torshpkg verify {os.path.basename(p)} exits 0", r.returncode == 0,
                    f"exit {r.returncode}: {tail(r.stdout + r.stderr)}")
            h.note(f"verify took {time.monotonic() - t:.1f} s")


if __name__ == "__main__":
    main()
