#!/usr/bin/env python3
"""Remote packages over HTTP(S): mount.torshpkg and the CLI verbs on URLs, against nginx (HTTPS
with a test CA, http2, plain HTTP) and httpfault.py (resets, truncation, stalls, no Range support,
5xx/429, corrupted chunk bytes, a package replaced mid-mount, 404/403), with mirrors and the disk
cache. Needs root, /dev/fuse, nginx and openssl; servers bind 127.0.0.1 on free ports and are
stopped by the Harness cleanup.
"""
from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tpkgtest import (Harness, abort_fuse_connection, inspect_json, is_mounted, mount_procs,  # noqa: E402
                      sha256_file, tail, walk)
import remote_servers as rs  # noqa: E402

CHUNK = 256 * 1024
TIMEOUT = 2  # -o timeout= for the fault tests; httpfault's slow mode sleeps longer than this
READ_TIMEOUT = 300  # seconds for reading a whole tree through a mount
STATS_KEYS = ("requests", "retries", "failovers", "bytes_fetched", "bytes_from_cache", "bytes_decoded",
              "digest_failures", "mirror", "mirrors")


# -- helpers ------------------------------------------------------------------------------------

def file_digests(root: str) -> dict[str, str]:
    out = {}
    for rel in walk(root):
        p = os.path.join(root, rel)
        if rel and os.path.isfile(p) and not os.path.islink(p):
            out[rel] = sha256_file(p)
    return out


def footer(path: str) -> dict:
    with open(path, "rb") as f:
        f.seek(-128, os.SEEK_END)
        b = f.read(128)
    io, cc, ic, ss, ms = struct.unpack_from("<QQQQQ", b, 0)
    return {"index_offset": io, "chunk_count": cc, "inode_count": ic, "strings_size": ss, "manifest_size": ms}


def chunk_digests(path: str) -> set[str]:
    """The SHA-256 of every chunk in the chunk table (56-byte entries, digest at +24)."""
    ft = footer(path)
    with open(path, "rb") as f:
        f.seek(ft["index_offset"])
        table = f.read(56 * ft["chunk_count"])
    return {table[i * 56 + 24:i * 56 + 56].hex() for i in range(ft["chunk_count"])}


def read_tree(mnt: str, expected: dict[str, str], threads: int = 4, timeout: float = READ_TIMEOUT,
              only=None) -> dict[str, tuple]:
    """Reads files through the mount with `threads` concurrent readers. rel -> ("ok"|"wrong", bytes)
    or ("error", errno, message) or ("hung",). A hang aborts the mount's FUSE connection."""
    rels = [r for r in expected if only is None or only(r)]

    def one(rel):
        hh = hashlib.sha256()
        n = 0
        try:
            with open(os.path.join(mnt, rel), "rb") as f:
                while True:
                    b = f.read(1 << 20)
                    if not b:
                        break
                    hh.update(b)
                    n += len(b)
        except OSError as e:
            return ("error", e.errno, str(e))
        return ("ok" if hh.hexdigest() == expected[rel] else "wrong", n)

    ex = ThreadPoolExecutor(threads)
    futs = {ex.submit(one, rel): rel for rel in rels}
    _done, pending = wait(futs, timeout=timeout)
    if pending:
        abort_fuse_connection(mnt)
        wait(pending, timeout=30)
    ex.shutdown(wait=False, cancel_futures=True)
    return {rel: (f.result() if f.done() else ("hung",)) for f, rel in futs.items()}


def summary(res: dict) -> str:
    kinds = {}
    for rel, r in res.items():
        key = r[0] if r[0] != "error" else f"errno {r[1]}"
        kinds.setdefault(key, []).append(rel)
    return "; ".join(f"{k}: {len(v)} (e.g. {v[0]})" for k, v in sorted(kinds.items()))


def all_ok(res: dict) -> bool:
    return bool(res) and all(r[0] == "ok" for r in res.values())


def responsive(mnt: str, timeout: float = 20) -> tuple[bool, str]:
    """The daemon still answers: mounted, its process alive, and `ls` of the root returns."""
    box = {}

    def f():
        try:
            box["ls"] = os.listdir(mnt)
        except OSError as e:
            box["err"] = str(e)

    t = threading.Thread(target=f, daemon=True)
    t.start()
    t.join(timeout)
    ok = "ls" in box and bool(box["ls"]) and is_mounted(mnt) and bool(mount_procs(mnt))
    return ok, f"mounted={is_mounted(mnt)} procs={mount_procs(mnt)} ls={box.get('ls', box.get('err', 'hung'))!s:.120}"


def read_stats(mnt: str):
    """MNT/.torshpkg/stats as a dict, or (None, why)."""
    try:
        with open(os.path.join(mnt, ".torshpkg", "stats"), "rb") as f:
            raw = f.read()
    except OSError as e:
        return None, f"open/read: {e}"
    try:
        d = json.loads(raw)
    except ValueError as e:
        return None, f"not JSON ({e}): {raw[:200]!r}"
    if not isinstance(d, dict):
        return None, f"not an object: {raw[:200]!r}"
    return d, ""


def mirror_entry(st: dict, url: str):
    for m in (st or {}).get("mirrors") or []:
        if isinstance(m, dict) and m.get("url") == url:
            return m
    return None


def one_line(text: str) -> bool:
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    return len(lines) == 1


def parse_ranges(reqs: list[dict], size: int) -> list[tuple[int, int]]:
    """[start, end) of each logged Range request (whole file for requests without one)."""
    out = []
    for e in reqs:
        r = e.get("range")
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", r or "")
        if not r:
            out.append((0, size))
        elif m and m[1] == "":
            out.append((max(0, size - int(m[2])), size))
        elif m:
            out.append((int(m[1]), min(size, int(m[2]) + 1 if m[2] else size)))
    return out


def refetched_bytes(ranges: list[tuple[int, int]]) -> int:
    """Bytes covered by more than one of the ranges, counted once per extra fetch."""
    total = sum(b - a for a, b in ranges)
    union, cur = 0, None
    for a, b in sorted(ranges):
        if cur and a <= cur[1]:
            cur[1] = max(cur[1], b)
        else:
            if cur:
                union += cur[1] - cur[0]
            cur = [a, b]
    if cur:
        union += cur[1] - cur[0]
    return total - union


def overlaps(ranges: list[tuple[int, int]], n: int = 4) -> list[str]:
    """A few pairs of overlapping ranges, for failure messages."""
    out = []
    rs_ = sorted(ranges)
    for i, (a, b) in enumerate(rs_):
        for c, d in rs_[i + 1:]:
            if c >= b:
                break
            out.append(f"{a}-{b - 1} & {c}-{d - 1}")
            if len(out) >= n:
                return out
    return out


def tls_words(text: str) -> bool:
    t = (text or "").lower()
    return any(w in t for w in ("certificate", "tls", "ssl"))


def num(st, key) -> int:
    v = (st or {}).get(key)
    return v if isinstance(v, (int, float)) else -1


# -- the test -------------------------------------------------------------------------------------

def main():
    with Harness("remote", deadline=1700) as h:
        T = h.tmp
        if not h.check(f"nginx is installed ({rs.NGINX})", os.access(rs.NGINX, os.X_OK),
                       "install it (scripts/install-deps)"):
            return
        if not h.check("openssl is installed", shutil.which(rs.OPENSSL) is not None):
            return

        h.section("model, packages, keys, certificates, servers")
        src = os.path.join(T, "src")
        h.gen_model(src, "--weights-size", "24M", "--shards", "4", "--small-files", "20", "--seed", "11")
        shards = sorted(glob.glob(os.path.join(src, "*.safetensors")))
        h.check("the model has several safetensors shards", len(shards) >= 3, f"{shards}")
        # v2: one shard changed (1.5 MiB of its tensor bytes), everything else identical
        src2 = os.path.join(T, "src2")
        shutil.copytree(src, src2, symlinks=True)
        changed = os.path.join(src2, os.path.basename(shards[1]))
        with open(changed, "r+b") as f:
            hlen = struct.unpack("<Q", f.read(8))[0]
            f.seek(8 + hlen + (1 << 20))
            f.write(random.Random(2).randbytes(3 << 19))
        os.utime(changed, ns=(os.stat(shards[1]).st_atime_ns, os.stat(shards[1]).st_mtime_ns))
        want = file_digests(src)
        want2 = file_digests(src2)
        small = "config.json" if "config.json" in want else sorted(want, key=lambda r: os.path.getsize(os.path.join(src, r)))[0]

        key = os.path.join(T, "pub")
        r = h.tpkg("keygen", "-o", key)
        h.check("keygen", r.returncode == 0, tail(r.stderr))
        pub = key + ".pub"
        www = os.path.join(T, "www")
        os.makedirs(www)
        pkg = os.path.join(www, "model.tpkg")
        pkg2 = os.path.join(www, "model-v2.tpkg")
        for s, p, v in ((src, pkg, "1.0.0"), (src2, pkg2, "1.1.0")):
            r = h.tpkg("pack", s, "-o", p, "--name", "model", "--version", v, "--chunk-size", "256K",
                       "--sign", key + ".key", "-q", timeout=600)
            if not h.check(f"pack {os.path.basename(p)} --chunk-size 256K --sign", r.returncode == 0, tail(r.stderr)):
                return
        size1, size2 = os.path.getsize(pkg), os.path.getsize(pkg2)
        ft1 = footer(pkg)
        h.note(f"model.tpkg {size1} bytes, {ft1['chunk_count']} chunks; model-v2.tpkg {size2} bytes")
        local = inspect_json(h, pkg) or {}

        ca = rs.make_ca(T, "ca")
        other_ca = rs.make_ca(T, "other-ca", "some other CA")
        cert = rs.make_server_cert(T, ca)
        ngx = rs.Nginx(h, www, cert, extra="    location = /forbidden.tpkg { return 403; }\n")
        h.check("nginx serves HTTPS and HTTP on 127.0.0.1", ngx.alive(),
                f"https {ngx.https_port}, http {ngx.http_port}")
        h.note(f"nginx https://127.0.0.1:{ngx.https_port} (http2={ngx.http2}), http://127.0.0.1:{ngx.http_port}")
        fs = rs.FaultProcess(h, www)
        h.note(f"httpfault.py http://127.0.0.1:{fs.port}")
        url = ngx.https("model.tpkg")
        url2 = ngx.https("model-v2.tpkg")
        tls = ("-o", f"cacert={ca['cert']}")
        signed = ("-o", f"pubkey={pub}")
        n_mnt = [0]

        def new_mnt(label):
            n_mnt[0] += 1
            return os.path.join(T, f"mnt-{n_mnt[0]:02d}-{label}")

        def mount(u, mnt, *opts, timeout=90):
            return h.mount(u, mnt, *signed, *opts, timeout=timeout, allow_unsigned=False)

        # ---------------------------------------------------------------------------------------
        h.section("HTTPS mount through nginx")
        mnt = new_mnt("https")
        cache_a = os.path.join(T, "cache-a")
        m0 = ngx.mark()
        t0 = time.monotonic()
        rc, log = mount(url, mnt, *tls, "-o", f"cache_dir={cache_a}", "-o", "prefetch=none")
        took = time.monotonic() - t0
        if h.check("mount https://.../model.tpkg -o cacert=ca.pem -o pubkey=... exits 0 and mounts",
                   rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}"):
            reqs = ngx.requests(m0, "model.tpkg")
            sent = sum(e["bytes"] for e in reqs)
            h.note(f"mount took {took:.2f} s, {len(reqs)} requests, {sent} bytes: "
                   + ", ".join(f"{e['method']} {e['range']} {e['status']} {e['bytes']}" for e in reqs))
            h.check("the mount read the tail with at most 3 requests", 1 <= len(reqs) <= 3,
                    f"{len(reqs)} requests")
            h.check("the mount's requests are Range requests for a small part of the package (< 1/8)",
                    all(e["range"] or e["method"] == "HEAD" for e in reqs) and sent < size1 / 8,
                    f"{[(e['method'], e['range'], e['bytes']) for e in reqs]}")
            h.check("the mount did not leave a background fetch running (prefetch=none)",
                    len(ngx.requests(m0, "model.tpkg")) == len(reqs))
            h.check("ls of the root lists the model's entries and no .torshpkg",
                    sorted(os.listdir(mnt)) == sorted(os.listdir(src)),
                    f"{sorted(set(os.listdir(mnt)) ^ set(os.listdir(src)))}")
            st, why = read_stats(mnt)
            h.check("MNT/.torshpkg/stats is a JSON object with the documented keys",
                    st is not None and all(k in st for k in STATS_KEYS),
                    why or f"missing {[k for k in STATS_KEYS if k not in st]}")
            h.check("stats: mirror is the package URL, mirrors[] lists it with state ok",
                    st and st.get("mirror") == url and (mirror_entry(st, url) or {}).get("state") == "ok",
                    f"{st and {k: st.get(k) for k in ('mirror', 'mirrors')}}")

            m1 = ngx.mark()
            try:
                got = open(os.path.join(mnt, small), "rb").read()
            except OSError as e:
                got = f"{e}".encode()
            h.check(f"reading {small} returns its bytes", got == open(os.path.join(src, small), "rb").read(),
                    f"{got[:100]!r}")
            reqs = ngx.requests(m1, "model.tpkg")
            sent = sum(e["bytes"] for e in reqs)
            h.note(f"reading {small}: {len(reqs)} requests, {sent} bytes")
            h.check(f"lazy: reading {small} fetched far less than the package ({sent} of {size1} bytes, "
                    f"limit {size1 // 8}; 0 when its chunk came with the tail)",
                    sent < size1 / 8 and all(e["status"] == 206 for e in reqs),
                    f"{[(e['range'], e['status'], e['bytes']) for e in reqs]}")

            m1 = ngx.mark()
            first = os.path.relpath(shards[0], src)
            mid = os.path.getsize(shards[0]) // 2
            try:
                fd = os.open(os.path.join(mnt, first), os.O_RDONLY)
                try:
                    got = os.pread(fd, 4096, mid)
                finally:
                    os.close(fd)
            except OSError as e:
                got = f"{e}".encode()
            with open(shards[0], "rb") as f:
                f.seek(mid)
                h.check(f"pread of 4 KiB in the middle of {first} returns its bytes", got == f.read(4096), f"{got[:100]!r}")
            reqs = ngx.requests(m1, "model.tpkg")
            sent = sum(e["bytes"] for e in reqs)
            h.note(f"pread of 4 KiB in the middle of {first}: {len(reqs)} requests, {sent} bytes")
            h.check(f"lazy: a random 4 KiB read of a {os.path.getsize(shards[0])}-byte shard fetched about one chunk "
                    f"({sent} bytes, limit {2 * CHUNK})", 0 < sent <= 2 * CHUNK, f"{[(e['range'], e['bytes']) for e in reqs]}")

            m2 = ngx.mark()
            res = read_tree(mnt, want)
            h.check(f"all {len(want)} files read back byte-exact over HTTPS (4 concurrent readers)",
                    all_ok(res), summary(res))
            h.check("the mounted tree has the same entries as the source", walk(mnt) == walk(src),
                    f"{sorted(set(walk(mnt)) ^ set(walk(src)))[:5]}")
            reqs = ngx.requests(m2, "model.tpkg")
            fetched = sum(e["bytes"] for e in reqs)
            since_mount = parse_ranges(ngx.requests(m0, "model.tpkg"), size1)
            again = refetched_bytes(since_mount)
            h.check("reading everything fetched about the package once (< 1.25x its size)",
                    fetched < 1.25 * size1, f"{fetched} bytes for a {size1}-byte package")
            h.check(f"no part of the package was fetched twice since the mount (<= 5%: {again} bytes)",
                    again <= 0.05 * size1, f"{again} bytes of {size1} fetched more than once (overlapping Range requests, e.g. "
                    f"{', '.join(overlaps(since_mount))})")
            h.check("chunk reads were Range requests answered 206",
                    reqs and all(e["range"] and e["status"] == 206 for e in reqs),
                    f"{[(e['range'], e['status']) for e in reqs if not (e['range'] and e['status'] == 206)][:5]}")
            coalesced = [e for e in reqs if e["bytes"] > CHUNK * 1.1]
            h.note(f"{len(reqs)} chunk requests for {ft1['chunk_count']} chunks; {len(coalesced)} larger than one chunk")
            h.check("neighbouring chunks were coalesced (fewer requests than chunks)",
                    0 < len(reqs) < ft1["chunk_count"], f"{len(reqs)} requests, {ft1['chunk_count']} chunks")
            st, why = read_stats(mnt)
            h.check("stats after reading everything: requests > 0, bytes_fetched about the package size (< 1.5x), "
                    "no retries, failovers or digest failures",
                    st is not None and num(st, "requests") > 0 and 0.5 * size1 < num(st, "bytes_fetched") < 1.5 * size1
                    and num(st, "retries") == 0 and num(st, "failovers") == 0 and num(st, "digest_failures") == 0,
                    why or json.dumps({k: st.get(k) for k in STATS_KEYS if k != "mirrors"}))
            unique_raw = local.get("raw_bytes", 0) - local.get("dedup_saved_bytes", 0)
            h.check("stats: bytes_decoded >= the package's unique raw bytes",
                    st is not None and num(st, "bytes_decoded") >= 0.99 * unique_raw,
                    f"{st and st.get('bytes_decoded')} < {unique_raw}")
            want_proto = "HTTP/2.0" if ngx.http2 else "HTTP/1.1"
            h.check(f"the HTTPS requests used {want_proto} (nginx offers {'h2' if ngx.http2 else 'http/1.1'} over TLS)",
                    reqs and all(e["protocol"] == want_proto for e in reqs), f"{set(e['protocol'] for e in reqs)}")
            conns = {e["connection"] for e in reqs}
            h.check(f"connections are kept alive ({len(reqs)} requests on {len(conns)} connections)",
                    reqs and len(conns) <= max(8, len(reqs) // 2), f"{len(conns)} connections")
        h.unmount(mnt)

        h.section("plain HTTP")
        mnt = new_mnt("http")
        rc, log = mount(ngx.http("model.tpkg"), mnt, "-o", "cache_dir=none")
        if h.check("mount http://127.0.0.1:PORT/model.tpkg exits 0", rc == 0 and os.path.ismount(mnt),
                   f"exit {rc}: {tail(log)}"):
            res = read_tree(mnt, want)
            h.check("all files read back byte-exact over plain HTTP", all_ok(res), summary(res))
        h.unmount(mnt)

        # ---------------------------------------------------------------------------------------
        h.section("TLS errors, -o insecure")
        mnt = new_mnt("wrongca")
        rc, log = mount(url, mnt, "-o", f"cacert={other_ca['cert']}", "-o", "cache_dir=none", timeout=60)
        h.check("a server certificate from another CA: non-zero exit, nothing mounted, a one-line error "
                "about the certificate", rc not in (0, None) and not os.path.ismount(mnt) and one_line(log)
                and tls_words(log), f"exit {rc}: {log!r:.400}")
        h.note(f"wrong CA said: {log.strip()[:200]}")
        h.unmount(mnt)
        mnt = new_mnt("sysca")
        rc, log = mount(url, mnt, "-o", "cache_dir=none", timeout=60)
        h.check("the test CA is not among the system CAs: without cacert=, non-zero exit and a one-line error "
                "about the certificate", rc not in (0, None) and not os.path.ismount(mnt) and one_line(log)
                and tls_words(log), f"exit {rc}: {log!r:.400}")
        h.unmount(mnt)
        mnt = new_mnt("insecure")
        rc, log = mount(url, mnt, "-o", "insecure", "-o", "cache_dir=none")
        if h.check("-o insecure mounts despite the unknown CA and prints a warning",
                   rc == 0 and os.path.ismount(mnt) and "warning" in log.lower(), f"exit {rc}: {tail(log)}"):
            res = read_tree(mnt, want, only=lambda r: r == small or r.endswith(".safetensors"))
            h.check("-o insecure: the files read back byte-exact", all_ok(res), summary(res))
        h.unmount(mnt)

        h.section("404 and 403 at mount")
        for label, u, code in (("404", ngx.https("missing.tpkg"), "404"), ("403", ngx.https("forbidden.tpkg"), "403"),
                               ("404 (httpfault)", fs.url("missing.tpkg"), "404")):
            mnt = new_mnt("err" + code)
            t0 = time.monotonic()
            rc, log = mount(u, mnt, *tls, "-o", "cache_dir=none", timeout=60)
            took = time.monotonic() - t0
            h.check(f"{label} at mount: exit 3, nothing mounted, one line on stderr naming {code}",
                    rc == 3 and not os.path.ismount(mnt) and one_line(log) and code in log,
                    f"exit {rc} after {took:.1f} s: {log!r:.400}")
            h.unmount(mnt)
        fs.control(mode="ok", path_status={"/model.tpkg": 403})
        mnt = new_mnt("err403f")
        rc, log = mount(fs.url("model.tpkg"), mnt, "-o", "cache_dir=none", timeout=60)
        h.check("403 (httpfault) at mount: exit 3, one line naming 403",
                rc == 3 and not os.path.ismount(mnt) and one_line(log) and "403" in log, f"exit {rc}: {log!r:.400}")
        h.unmount(mnt)
        fs.control(mode="ok", path_status={"/model.tpkg": None}, reset_stats=True)

        # ---------------------------------------------------------------------------------------
        h.section("faults on the primary, nginx as the mirror")
        idx = ft1["index_offset"]
        slow = TIMEOUT * 2 + 1
        cases = [
            ("reset", dict(mode="reset", fraction=0.5, limit=6, seed=3, part=0.3), "retry"),
            ("truncate", dict(mode="truncate", fraction=0.5, limit=6, seed=4), "retry"),
            ("slow (stall before the headers)", dict(mode="slow", fraction=0.5, limit=3, seed=5, delay=slow), "retry"),
            ("slow (stall mid-body)", dict(mode="slow", where="mid", fraction=0.5, limit=3, seed=6, delay=slow), "retry"),
            ("norange", dict(mode="norange", limit=100000), "none"),
            ("status 503", dict(mode="status", code=503, count=4), "retry"),
            ("status 500", dict(mode="status", code=500, count=4), "retry"),
            ("status 429 Retry-After: 1", dict(mode="status", code=429, count=2, retry_after=1), "retry"),
            ("corrupt", dict(mode="corrupt", limit=100000, ranged_only=True, corrupt_hi=idx), "digest"),
        ]
        common = ("-o", f"timeout={TIMEOUT}", "-o", "retries=6", "-o", "cache_dir=none", "-o", "prefetch=none")
        for label, cfg, expect in cases:
            primary = fs.url("model.tpkg")
            mnt = new_mnt(cfg["mode"])
            fs.control(reset_stats=True, **cfg)
            rc, log = mount(primary, mnt, *tls, "-o", f"mirror={url}", *common)
            if not h.check(f"{label} + mirror: mount exits 0", rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}"):
                h.unmount(mnt)
                continue
            res = read_tree(mnt, want)
            h.check(f"{label} + mirror: every file byte-exact", all_ok(res), summary(res))
            ok, why = responsive(mnt)
            h.check(f"{label} + mirror: the daemon is alive and answers ls", ok, why)
            st, why = read_stats(mnt)
            fst = fs.stats()
            injected = sum(fst["faults"].values())
            h.check(f"{label} + mirror: the fault was injected (httpfault counted {injected})", injected > 0,
                    json.dumps(fst["faults"]))
            shown = json.dumps({k: (st or {}).get(k) for k in STATS_KEYS}) if st else why
            if expect == "retry":
                h.check(f"{label} + mirror: stats show retries or failovers",
                        st is not None and num(st, "retries") + num(st, "failovers") > 0, shown)
            elif expect == "digest":
                h.check(f"{label} + mirror: stats show digest_failures > 0, the primary marked bad, "
                        f"the mirror in use",
                        st is not None and num(st, "digest_failures") > 0
                        and (mirror_entry(st, primary) or {}).get("state") == "bad" and st.get("mirror") == url,
                        shown)
            h.unmount(mnt)

        h.section("a primary that refuses connections")
        dead = f"http://127.0.0.1:{rs.free_port()}/model.tpkg"
        mnt = new_mnt("down")
        rc, log = mount(dead, mnt, *tls, "-o", f"mirror={url}", *common)
        if h.check("a dead primary + mirror: mount exits 0", rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}"):
            res = read_tree(mnt, want)
            h.check("a dead primary + mirror: every file byte-exact", all_ok(res), summary(res))
            st, why = read_stats(mnt)
            h.check("a dead primary + mirror: stats show a failover, the primary down, the mirror in use",
                    st is not None and num(st, "failovers") > 0
                    and (mirror_entry(st, dead) or {}).get("state") == "down" and st.get("mirror") == url,
                    json.dumps({k: (st or {}).get(k) for k in ("failovers", "mirror", "mirrors")}) if st else why)
        h.unmount(mnt)

        h.section("two mirrors: a dead primary, a corrupting mirror, then nginx")
        mnt = new_mnt("chain")
        fs.control(reset_stats=True, mode="corrupt", limit=100000, ranged_only=True, corrupt_hi=idx)
        dead = f"http://127.0.0.1:{rs.free_port()}/model.tpkg"
        rc, log = mount(dead, mnt, *tls, "-o", f"mirror={fs.url('model.tpkg')}", "-o", f"mirror={url}", *common)
        if h.check("dead primary, corrupting mirror, nginx: mount exits 0", rc == 0 and os.path.ismount(mnt),
                   f"exit {rc}: {tail(log)}"):
            res = read_tree(mnt, want)
            h.check("dead primary, corrupting mirror, nginx: every file byte-exact", all_ok(res), summary(res))
            st, why = read_stats(mnt)
            states = [(mirror_entry(st, u) or {}).get("state") for u in (dead, fs.url("model.tpkg"), url)]
            h.check("dead primary, corrupting mirror, nginx: states down, bad, ok; digest_failures > 0; nginx in use",
                    st is not None and states == ["down", "bad", "ok"] and num(st, "digest_failures") > 0
                    and st.get("mirror") == url, json.dumps(st.get("mirrors") if st else why))
        h.unmount(mnt)
        fs.control(reset_stats=True, mode="ok")

        h.section("faults with the fault server alone")
        alone = [
            ("reset", dict(mode="reset", fraction=0.5, limit=4, seed=7, part=0.3), "retry"),
            ("truncate", dict(mode="truncate", fraction=0.5, limit=4, seed=8), "retry"),
            ("slow", dict(mode="slow", fraction=0.5, limit=2, seed=9, delay=slow), "retry"),
            ("norange", dict(mode="norange", limit=100000), "none"),
            ("status 503", dict(mode="status", code=503, count=3), "retry"),
            ("status 429 Retry-After: 1", dict(mode="status", code=429, count=2, retry_after=1), "retry-after"),
        ]
        for label, cfg, expect in alone:
            mnt = new_mnt("alone-" + cfg["mode"])
            fs.control(reset_stats=True, **cfg)
            rc, log = mount(fs.url("model.tpkg"), mnt, *common)
            if not h.check(f"{label} alone: mount exits 0", rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}"):
                h.unmount(mnt)
                continue
            res = read_tree(mnt, want)
            h.check(f"{label} alone: every file byte-exact", all_ok(res), summary(res))
            ok, why = responsive(mnt)
            h.check(f"{label} alone: the daemon is alive", ok, why)
            st, why = read_stats(mnt)
            fst = fs.stats()
            injected = sum(fst["faults"].values())
            h.check(f"{label} alone: the fault was injected (httpfault counted {injected})", injected > 0,
                    json.dumps(fst["faults"]))
            shown = json.dumps({k: (st or {}).get(k) for k in STATS_KEYS if k != "mirrors"}) if st else why
            hit = sorted((e for e in fst["log"] if e["fault"]), key=lambda e: e["begun"])
            h.note(f"{label} alone: faults on " + ", ".join(f"{e['range']} ({e['fault']})" for e in hit[:6]))
            if expect != "none":
                h.check(f"{label} alone: stats show retries > 0", st is not None and num(st, "retries") > 0, shown)
            if expect == "retry-after":
                log_ = sorted((e for e in fst["log"] if e["path"] == "/model.tpkg"), key=lambda e: e["begun"])
                # from the end of each 429 to the start of the next request
                gaps = [log_[i + 1]["begun"] - e["t"] for i, e in enumerate(log_[:-1]) if e["status"] == 429]
                t0 = log_[0]["begun"] if log_ else 0
                h.check("429 alone: the next request came at least ~1 s (Retry-After) after each 429",
                        gaps and min(gaps) >= 0.9, f"gaps {[round(g, 2) for g in gaps]}; requests (s, range, status): "
                        + ", ".join(f"{e['begun'] - t0:.2f}..{e['t'] - t0:.2f} {e['range']} {e['status']}" for e in log_[:8]))
            if cfg["mode"] == "norange":
                h.check("norange alone: the server answered 200 with whole bodies",
                        fst["status"].get("200", 0) > 0 and fst["faults"].get("norange", 0) > 0, json.dumps(fst["status"]))
            h.unmount(mnt)

        mnt = new_mnt("alone-corrupt")
        fs.control(reset_stats=True, mode="corrupt", limit=100000, ranged_only=True, corrupt_hi=idx)
        rc, log = mount(fs.url("model.tpkg"), mnt, *common)
        if h.check("corrupt alone: mount exits 0 (the tail is intact)", rc == 0 and os.path.ismount(mnt),
                   f"exit {rc}: {tail(log)}"):
            res = read_tree(mnt, want)
            wrong = [r for r, v in res.items() if v[0] in ("wrong", "hung")]
            eio = [r for r, v in res.items() if v[0] == "error" and v[1] == errno.EIO]
            other = [r for r, v in res.items() if v[0] == "error" and v[1] != errno.EIO]
            h.check("corrupt alone: no read returned wrong bytes; reads of corrupted chunks fail with EIO",
                    not wrong and not other and len(eio) > 0, summary(res))
            st, why = read_stats(mnt)
            h.check("corrupt alone: stats show digest_failures > 0", st is not None and num(st, "digest_failures") > 0,
                    json.dumps(st) if st else why)
            ok, why = responsive(mnt)
            h.check("corrupt alone: the daemon is alive", ok, why)
        h.unmount(mnt)

        h.section("the package replaced on the server mid-mount")
        mnt = new_mnt("replace")
        fs.control(reset_stats=True, mode="ok", replace={"/model.tpkg": None})
        rc, log = mount(fs.url("model.tpkg"), mnt, "-o", "timeout=5", "-o", "retries=2", "-o", "cache_dir=none",
                        "-o", "prefetch=none")
        if h.check("replace: mount exits 0", rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}"):
            res = read_tree(mnt, want, only=lambda r: r == small)
            h.check(f"replace: {small} reads back before the replacement", all_ok(res), summary(res))
            fs.control(replace={"/model.tpkg": pkg2})
            res = read_tree(mnt, want)
            wrong = [r for r, v in res.items() if v[0] in ("wrong", "hung")]
            h.check("replace: no read returns wrong bytes (each file is either exact or fails)", not wrong, summary(res))
            shard_res = {r: v for r, v in res.items() if r.endswith(".safetensors")}
            h.check("replace: reading any safetensors shard (not fetched before) fails with EIO",
                    shard_res and all(v[0] == "error" and v[1] == errno.EIO for v in shard_res.values()),
                    summary(shard_res))
            ok, why = responsive(mnt)
            h.check("replace: the daemon is alive", ok, why)
            fst = fs.stats()
            h.note(f"after the replacement the server answered {json.dumps(fst['status'])}")
        h.unmount(mnt)
        fs.control(reset_stats=True, mode="ok", replace={"/model.tpkg": None})

        h.section("a server that always fails")
        mnt = new_mnt("always503")
        fs.control(reset_stats=True, mode="status", code=503, count=100000)
        t0 = time.monotonic()
        rc, log = mount(fs.url("model.tpkg"), mnt, "-o", "timeout=2", "-o", "retries=2", "-o", "cache_dir=none", timeout=120)
        took = time.monotonic() - t0
        h.check("always 503: the mount gives up (non-zero exit, nothing mounted) within 60 s with a one-line "
                "error naming 503", rc not in (0, None) and not os.path.ismount(mnt) and took < 60 and one_line(log)
                and "503" in log,
                f"exit {rc} after {took:.1f} s: {log!r:.400}")
        h.unmount(mnt)
        fs.control(reset_stats=True, mode="ok")

        # ---------------------------------------------------------------------------------------
        h.section("disk cache")
        cache = os.path.join(T, "cache")
        mnt = new_mnt("cache-v1")
        rc, log = mount(url, mnt, *tls, "-o", f"cache_dir={cache}")
        if h.check("v1 with cache_dir: mount exits 0", rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}"):
            res = read_tree(mnt, want)
            h.check("v1 with cache_dir: every file byte-exact", all_ok(res), summary(res))
        h.unmount(mnt)
        entries = [p for p in glob.glob(os.path.join(cache, "chunks", "*", "*")) if os.path.isfile(p)]
        layout = [p for p in entries if not re.fullmatch(r"[0-9a-f]{64}", os.path.basename(p))
                  or os.path.basename(os.path.dirname(p)) != os.path.basename(p)[:2]]
        digests1 = chunk_digests(pkg)
        names = {os.path.basename(p) for p in entries}
        h.check("the cache holds DIR/chunks/AB/<64 hex> entries, one per chunk of v1",
                entries and not layout and names == digests1,
                f"{len(entries)} entries for {len(digests1)} chunks; bad names {layout[:3]}; "
                f"not chunks of v1 {sorted(names - digests1)[:2]}; missing {len(digests1 - names)}")
        mnt = new_mnt("cache-v1-warm")
        m0 = ngx.mark()
        rc, log = mount(url, mnt, *tls, "-o", f"cache_dir={cache}")
        if h.check("v1 again with the warm cache: mount exits 0", rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}"):
            res = read_tree(mnt, want)
            h.check("v1 warm: every file byte-exact", all_ok(res), summary(res))
            st, why = read_stats(mnt)
            fetched = sum(e["bytes"] for e in ngx.requests(m0, "model.tpkg"))
            h.check("v1 warm: chunks come from the cache (bytes_from_cache > 0, bytes_fetched < 1/8 of the package, "
                    "nginx sent < 1/8)",
                    st is not None and num(st, "bytes_from_cache") > 0 and 0 <= num(st, "bytes_fetched") < size1 / 8
                    and fetched < size1 / 8,
                    (json.dumps({k: st.get(k) for k in ("bytes_fetched", "bytes_from_cache")}) if st else why)
                    + f", nginx sent {fetched}")
        h.unmount(mnt)
        mnt = new_mnt("cache-v2")
        m0 = ngx.mark()
        rc, log = mount(url2, mnt, *tls, "-o", f"cache_dir={cache}")
        if h.check("v2 with v1's cache: mount exits 0", rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}"):
            res = read_tree(mnt, want2)
            h.check("v2: every file byte-exact (against the changed source)", all_ok(res), summary(res))
            st, why = read_stats(mnt)
            fetched = sum(e["bytes"] for e in ngx.requests(m0, "model-v2.tpkg"))
            new_chunks = len(chunk_digests(pkg2) - digests1)
            h.note(f"v2 has {new_chunks} chunks v1 lacks; stats "
                   + (json.dumps({k: st.get(k) for k in ('bytes_fetched', 'bytes_from_cache', 'requests')}) if st else why)
                   + f"; nginx sent {fetched} bytes")
            h.check("v2: only the chunks v1 lacked were fetched (bytes_fetched < 1/4 of the package, "
                    "bytes_from_cache > 1/2)",
                    st is not None and 0 < num(st, "bytes_fetched") < size2 / 4 and num(st, "bytes_from_cache") > size2 / 2
                    and fetched < size2 / 4,
                    (json.dumps({k: st.get(k) for k in ("bytes_fetched", "bytes_from_cache")}) if st else why)
                    + f", nginx sent {fetched}")
        h.unmount(mnt)
        r = h.tpkg("cache", "ls", "--cache-dir", cache)
        listed = sum(1 for d in digests1 if d[:12] in r.stdout)
        h.check("torshpkg cache ls --cache-dir DIR exits 0 and lists the cached chunks",
                r.returncode == 0 and listed > 0, f"exit {r.returncode}, {listed} digests named: {tail(r.stdout + r.stderr, 300)}")
        r = h.tpkg("cache", "ls", "--json", "--cache-dir", cache)
        try:
            jl = {e["sha256"] for e in json.loads(r.stdout)["entries"]} if r.returncode == 0 else set()
        except (ValueError, KeyError, TypeError):
            jl = set()
        digests2 = chunk_digests(pkg2)
        h.check("cache ls --json: the entries are exactly the chunks of v1 and v2",
                jl == digests1 | digests2, f"exit {r.returncode}: {len(jl)} entries, {len(digests1 | digests2)} chunks; "
                f"{tail(r.stderr)}")
        r = h.tpkg("cache", "gc", "--cache-dir", cache)
        h.check("torshpkg cache gc --cache-dir DIR exits 0", r.returncode == 0, f"exit {r.returncode}: {tail(r.stderr)}")
        r = h.tpkg("cache", "gc", "--cache-dir", cache, "--max-size", "1M")
        used = sum(os.path.getsize(p) for p in glob.glob(os.path.join(cache, "chunks", "*", "*")) if os.path.isfile(p))
        h.check("torshpkg cache gc --max-size 1M leaves at most 1 MiB", r.returncode == 0 and used <= 1 << 20,
                f"exit {r.returncode}, {used} bytes left: {tail(r.stdout + r.stderr)}")
        r = h.tpkg("cache", "clear", "--cache-dir", cache)
        left = [p for p in glob.glob(os.path.join(cache, "chunks", "*", "*")) if os.path.isfile(p)]
        h.check("torshpkg cache clear --cache-dir DIR exits 0 and empties it", r.returncode == 0 and not left,
                f"exit {r.returncode}, {len(left)} left: {tail(r.stderr)}")

        cache_small = os.path.join(T, "cache-small")
        mnt = new_mnt("cache-size")
        rc, log = mount(url, mnt, *tls, "-o", f"cache_dir={cache_small}", "-o", "cache_dir_size=2M")
        if h.check("cache_dir_size=2M: mount exits 0", rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}"):
            res = read_tree(mnt, want)
            h.check("cache_dir_size=2M: every file byte-exact", all_ok(res), summary(res))
        h.unmount(mnt)
        used = sum(os.path.getsize(p) for p in glob.glob(os.path.join(cache_small, "chunks", "*", "*")) if os.path.isfile(p))
        h.check("cache_dir_size=2M: the cache stays within 2 MiB (+ one 256 KiB chunk of slack)",
                0 < used <= (2 << 20) + CHUNK, f"{used} bytes cached")

        h.section("two daemons on one cache dir; a full cache disk")
        shared = os.path.join(T, "cache-shared")
        mnts = [new_mnt("shared-a"), new_mnt("shared-b")]
        rcs = [mount(url, m, *tls, "-o", f"cache_dir={shared}", "-o", "prefetch=none")[0] for m in mnts]
        if h.check("two mounts of one URL with one cache_dir: both mount", rcs == [0, 0] and all(map(os.path.ismount, mnts)),
                   f"exits {rcs}"):
            results = [None, None]

            def read_into(i):
                results[i] = read_tree(mnts[i], want)

            readers = [threading.Thread(target=read_into, args=(i,)) for i in range(2)]
            for t in readers:
                t.start()
            for t in readers:
                t.join(READ_TIMEOUT * 2)
            h.check("two daemons reading at once through one cache dir: every file byte-exact in both",
                    all(r is not None and all_ok(r) for r in results),
                    "; ".join(summary(r) if r else "did not finish" for r in results))
        for m in mnts:
            h.unmount(m)
        names = {os.path.basename(p) for p in glob.glob(os.path.join(shared, "chunks", "*", "*")) if os.path.isfile(p)}
        temps = [p for p in glob.glob(os.path.join(shared, "tmp", "*"))]
        h.check("the shared cache holds exactly v1's chunks, no temp files left", names == digests1 and not temps,
                f"{len(names)} entries for {len(digests1)} chunks, {len(temps)} temp files")

        full = os.path.join(T, "cache-full")
        os.makedirs(full)
        if h.check("a 512 KiB tmpfs for a full cache disk", subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", full]).returncode == 0):
            try:
                mnt = new_mnt("cache-full")
                rc, log = mount(url, mnt, *tls, "-o", f"cache_dir={full}", "-o", "prefetch=none")
                if h.check("cache_dir on a full disk: mount exits 0", rc == 0 and os.path.ismount(mnt),
                           f"exit {rc}: {tail(log)}"):
                    res = read_tree(mnt, want)
                    h.check("cache_dir on a full disk: every file byte-exact (no caching, no errors)", all_ok(res),
                            summary(res))
                    st, why = read_stats(mnt)
                    dc = (st or {}).get("disk_cache") or {}
                    h.check("cache_dir on a full disk: stats show write_failures > 0",
                            num(dc, "write_failures") > 0, json.dumps(dc) if st else why)
                h.unmount(mnt)
            finally:
                subprocess.run(["umount", full])

        h.section("prefetch")
        mnt = new_mnt("prefetch-all")
        rc, log = mount(url, mnt, *tls, "-o", "cache_dir=none", "-o", "prefetch=all")
        if h.check("prefetch=all: mount exits 0", rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}"):
            st = None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                st, _why = read_stats(mnt)
                if st and num(st, "bytes_fetched") >= 0.9 * ft1["index_offset"]:
                    break
                time.sleep(0.5)
            h.check("prefetch=all: without any read, the whole package is fetched within 60 s",
                    st and num(st, "bytes_fetched") >= 0.9 * ft1["index_offset"],
                    f"bytes_fetched {st and st.get('bytes_fetched')} of {ft1['index_offset']}")
            res = read_tree(mnt, want)
            h.check("prefetch=all: every file byte-exact", all_ok(res), summary(res))
        h.unmount(mnt)

        mnt = new_mnt("prefetch-manifest")
        m0 = ngx.mark()
        rc, log = mount(url, mnt, *tls, "-o", "cache_dir=none", "-o", "prefetch=manifest")
        if h.check("prefetch=manifest: mount exits 0", rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}"):
            prev, stable = -1, 0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and stable < 4:  # until the background fetch settles
                st, _why = read_stats(mnt)
                cur = num(st, "bytes_fetched")
                stable = stable + 1 if cur == prev else 0
                prev = cur
                time.sleep(0.25)
            m1 = ngx.mark()
            others = {r: d for r, d in want.items() if not r.endswith(".safetensors")}
            res = read_tree(mnt, others)
            late = ngx.requests(m1, "model.tpkg")
            h.check("prefetch=manifest: the non-weight files were fetched in the background (reading them "
                    "afterwards makes no request), the weights were not (< 1/2 of the package)",
                    all_ok(res) and not late and 0 < prev < size1 / 2,
                    f"{summary(res)}; {len(late)} requests after the prefetch; bytes_fetched {prev} of {size1}")
        h.unmount(mnt)

        # ---------------------------------------------------------------------------------------
        h.section("CLI verbs on URLs")
        ca_opt = ("--cacert", ca["cert"])
        r = h.tpkg("inspect", url, *ca_opt)
        h.check("inspect URL --cacert exits 0 and shows the package", r.returncode == 0 and "model" in r.stdout,
                f"exit {r.returncode}: {tail(r.stderr or r.stdout)}")
        r = h.tpkg("inspect", "--json", url, *ca_opt)
        try:
            j = json.loads(r.stdout) if r.returncode == 0 else {}
        except ValueError:
            j = {}
        h.check("inspect --json URL: the same root digest and chunk count as the local file",
                j.get("root_sha256") == local.get("root_sha256") and j.get("chunks") == local.get("chunks"),
                f"exit {r.returncode}: {j.get('root_sha256')} vs {local.get('root_sha256')}: {tail(r.stderr)}")
        r = h.tpkg("ls", url, *ca_opt)
        h.check("ls URL lists the root entries", r.returncode == 0 and all(n in r.stdout for n in os.listdir(src)),
                f"exit {r.returncode}: {tail(r.stdout + r.stderr)}")
        r = h.tpkg("cat", url, small, *ca_opt, binary=True)
        h.check(f"cat URL {small} == the source", r.returncode == 0 and r.stdout == open(os.path.join(src, small), "rb").read(),
                f"exit {r.returncode}: {tail(r.stderr)}")
        shard_rel = os.path.relpath(shards[0], src)
        r = h.tpkg("cat", url, shard_rel, *ca_opt, binary=True)
        h.check(f"cat URL {shard_rel} == the source",
                r.returncode == 0 and hashlib.sha256(r.stdout).hexdigest() == want[shard_rel], f"exit {r.returncode}: {tail(r.stderr)}")
        r = h.tpkg("verify", url, *ca_opt, "--pubkey", pub, timeout=300)
        h.check("verify URL --pubkey exits 0", r.returncode == 0, f"exit {r.returncode}: {tail(r.stdout + r.stderr)}")
        out = os.path.join(T, "extracted")
        r = h.tpkg("extract", url, out, *ca_opt, timeout=300)
        got = file_digests(out) if os.path.isdir(out) else {}
        h.check("extract URL DIR exits 0 and gives the source's files byte-exact",
                r.returncode == 0 and got == want, f"exit {r.returncode}: {tail(r.stderr)}; "
                f"differ: {sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))[:5]}")
        r = h.tpkg("inspect", url, "--cacert", other_ca["cert"])
        h.check("inspect URL with the wrong CA: non-zero exit, one line on stderr about the certificate",
                r.returncode not in (0, None) and one_line(r.stderr) and tls_words(r.stderr),
                f"exit {r.returncode}: {r.stderr!r:.400}")
        r = h.tpkg("inspect", url, "--insecure")
        h.check("inspect URL --insecure: exit 0 with a warning", r.returncode == 0 and "warning" in r.stderr.lower(),
                f"exit {r.returncode}: {tail(r.stderr)}")
        r = h.tpkg("inspect", ngx.https("missing.tpkg"), *ca_opt)
        h.check("inspect of a 404 URL: non-zero exit, one line naming 404",
                r.returncode not in (0, None) and one_line(r.stderr) and "404" in r.stderr, f"exit {r.returncode}: {r.stderr!r:.400}")
        fs.control(reset_stats=True, mode="status", code=503, count=100000)
        r = h.tpkg("cat", fs.url("model.tpkg"), small, "--mirror", url, *ca_opt, "--timeout", str(TIMEOUT), binary=True)
        h.check("cat with an always-503 primary and --mirror nginx: the file's bytes",
                r.returncode == 0 and r.stdout == open(os.path.join(src, small), "rb").read(), f"exit {r.returncode}: {tail(r.stderr)}")
        fs.control(reset_stats=True, mode="ok")
        cli_cache = os.path.join(T, "cache-cli")
        r = h.tpkg("extract", url, os.path.join(T, "extracted2"), *ca_opt, "--cache-dir", cli_cache, timeout=300)
        n_cached = len(glob.glob(os.path.join(cli_cache, "chunks", "*", "*")))
        h.check("extract URL --cache-dir DIR fills the cache", r.returncode == 0 and n_cached > 0,
                f"exit {r.returncode}, {n_cached} entries: {tail(r.stderr)}")

        h.section("servers")
        h.check("nginx is still running", ngx.alive(), ngx._errors())
        h.check("httpfault.py is still running", fs.alive())


if __name__ == "__main__":
    main()
