#!/usr/bin/env python3
"""torshpkg CLI: help, version, usage errors and exit codes, pack options and refusals, atomic
output (no partial file on failure or SIGINT), inspect --json against the source, dedup,
safetensors summaries, reproducibility with SOURCE_DATE_EPOCH, ls/cat/extract behaviour.

Environment: TORSHPKG, GEN_MODEL (set by meson).
"""
import glob
import json
import math
import os
import random
import re
import signal
import stat
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tpkgtest import TORSHPKG, Harness, inspect_json, sha256_file, tail, walk, write  # noqa: E402

SUBCOMMANDS = ("pack", "inspect", "ls", "cat", "extract", "verify")


def leftovers(d):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(d, "*.tmp.*")))


def safetensors_summary(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
    tensors = {k: v for k, v in hdr.items() if k != "__metadata__"}
    dtypes = {}
    for v in tensors.values():
        dtypes[v["dtype"]] = dtypes.get(v["dtype"], 0) + 1
    return {"tensors": len(tensors), "parameters": sum(math.prod(v["shape"]) for v in tensors.values()),
            "dtypes": dtypes}


def main():
    with Harness("cli", deadline=540) as h:
        rnd = random.Random(11)
        T = h.tmp

        h.section("help, version, usage errors")
        r = h.tpkg("--help")
        h.check("torshpkg --help exits 0 and lists every subcommand",
                r.returncode == 0 and all(s in r.stdout for s in SUBCOMMANDS), f"exit {r.returncode}")
        for sub in SUBCOMMANDS:
            r = h.tpkg(sub, "--help")
            h.check(f"torshpkg {sub} --help exits 0 with usage", r.returncode == 0 and sub in r.stdout
                    and "usage" in r.stdout.lower(), f"exit {r.returncode}: {tail(r.stdout + r.stderr, 200)}")
        r = h.tpkg("--version")
        h.check("torshpkg --version exits 0 and prints a semantic version",
                r.returncode == 0 and re.search(r"\btorshpkg \d+\.\d+\.\d+", r.stdout), f"{r.stdout!r}")

        src = os.path.join(T, "src")
        write(f"{src}/a.txt", b"alpha\n")
        write(f"{src}/dir/b.json", b'{"b": 1}\n')
        write(f"{src}/dir/deeper/c.py", b"print('c')\n", mode=0o755)
        write(f"{src}/empty", b"")
        os.makedirs(f"{src}/emptydir")
        os.symlink("dir/b.json", f"{src}/link-b")
        os.symlink("/etc/passwd", f"{src}/abs-link")
        os.symlink("dir", f"{src}/link-dir")
        pkg = os.path.join(T, "p.tpkg")
        r = h.tpkg("pack", src, "-o", pkg, "-q")
        h.check("pack of a small tree exits 0", r.returncode == 0 and os.path.isfile(pkg), tail(r.stderr))

        usage = [
            ("no arguments", []),
            ("an unknown subcommand", ["frobnicate"]),
            ("pack without arguments", ["pack"]),
            ("pack without -o", ["pack", src]),
            ("pack --chunk-size 3M", ["pack", src, "-o", f"{T}/u.tpkg", "--chunk-size", "3M"]),
            ("pack --chunk-size 32K", ["pack", src, "-o", f"{T}/u.tpkg", "--chunk-size", "32K"]),
            ("pack --chunk-size 8M", ["pack", src, "-o", f"{T}/u.tpkg", "--chunk-size", "8M"]),
            ("pack --chunk-size abc", ["pack", src, "-o", f"{T}/u.tpkg", "--chunk-size", "abc"]),
            ("pack --level abc", ["pack", src, "-o", f"{T}/u.tpkg", "--level", "abc"]),
            ("pack --version 1.2", ["pack", src, "-o", f"{T}/u.tpkg", "--version", "1.2"]),
            ("pack --version 01.2.3", ["pack", src, "-o", f"{T}/u.tpkg", "--version", "01.2.3"]),
            ("pack --version v1.2.3", ["pack", src, "-o", f"{T}/u.tpkg", "--version", "v1.2.3"]),
            ("pack --depends 'foo@>>1.2'", ["pack", src, "-o", f"{T}/u.tpkg", "--depends", "foo@>>1.2"]),
            ("pack --depends '@1.0.0' (no name)", ["pack", src, "-o", f"{T}/u.tpkg", "--depends", "@1.0.0"]),
            ("pack --depends 'foo@' (empty range)", ["pack", src, "-o", f"{T}/u.tpkg", "--depends", "foo@"]),
            ("pack --depends 'bad name@1.0.0'", ["pack", src, "-o", f"{T}/u.tpkg", "--depends", "bad name@1.0.0"]),
            ("pack --depends 'foo@1.2.3.4'", ["pack", src, "-o", f"{T}/u.tpkg", "--depends", "foo@1.2.3.4"]),
            ("pack --name 'has space'", ["pack", src, "-o", f"{T}/u.tpkg", "--name", "has space"]),
            ("inspect without a file", ["inspect"]),
            ("inspect with an unknown option", ["inspect", "--bogus", pkg]),
            ("cat without a path", ["cat", pkg]),
            ("extract without a destination", ["extract", pkg]),
            ("verify --threads abc", ["verify", pkg, "--threads", "abc"]),
        ]
        for what, args in usage:
            r = h.tpkg(*args)
            written = os.path.exists(f"{T}/u.tpkg") or leftovers(T)
            h.check(f"{what}: exit 2 with a message{', nothing written' if args[:1] == ['pack'] else ''}",
                    r.returncode == 2 and r.stderr.strip() and not written,
                    f"exit {r.returncode}, written {bool(written)}: {tail(r.stderr, 200)}")
            if os.path.exists(f"{T}/u.tpkg"):
                os.unlink(f"{T}/u.tpkg")

        h.section("not found, not a package")
        for what, args, want in (
                ("cat of a missing path", ["cat", pkg, "no/such/file"], 6),
                ("cat of one good and one missing path", ["cat", pkg, "a.txt", "nope"], 6),
                ("ls of a missing path", ["ls", pkg, "nope"], 6),
                ("cat of an absolute symlink (leaves the package)", ["cat", pkg, "abs-link"], 6),
                ("inspect of a missing package", ["inspect", f"{T}/missing.tpkg"], 3),
                ("verify of a missing package", ["verify", f"{T}/missing.tpkg"], 3),
                ("inspect of a text file", ["inspect", f"{src}/a.txt"], 4),
        ):
            r = h.tpkg(*args)
            h.check(f"{what}: exit {want}", r.returncode == want and r.stderr.strip(),
                    f"exit {r.returncode}: {tail(r.stderr, 200)}")
        r = h.tpkg("cat", pkg, "dir")
        h.check("cat of a directory fails with a message", r.returncode not in (0, None) and r.returncode < 128
                and r.stderr.strip(), f"exit {r.returncode}: {tail(r.stderr, 200)}")
        r = h.tpkg("inspect", src)
        h.check("inspect of a directory fails with a message", r.returncode not in (0, None) and r.returncode < 128
                and r.stderr.strip(), f"exit {r.returncode}: {tail(r.stderr, 200)}")

        h.section("pack refusals and atomic output")
        r = h.tpkg("pack", f"{T}/no-such-dir", "-o", f"{T}/x.tpkg")
        h.check("pack of a nonexistent directory fails with a message and writes nothing",
                r.returncode not in (0, None) and r.stderr.strip() and not os.path.exists(f"{T}/x.tpkg"),
                f"exit {r.returncode}: {tail(r.stderr, 200)}")
        r = h.tpkg("pack", f"{src}/a.txt", "-o", f"{T}/x.tpkg")
        h.check("pack of a regular file fails", r.returncode not in (0, None) and not os.path.exists(f"{T}/x.tpkg"),
                f"exit {r.returncode}")
        out = f"{T}/missing-dir/sub/out.tpkg"
        r = h.tpkg("pack", src, "-o", out)
        h.check("pack to a directory that does not exist fails, creates no directory and no partial file",
                r.returncode not in (0, None) and r.stderr.strip() and not os.path.exists(f"{T}/missing-dir")
                and not leftovers(T), f"exit {r.returncode}: {tail(r.stderr, 200)}")
        bad_root = os.path.join(T, "bad-root")
        write(f"{bad_root}/.torshpkg/x", b"x")
        r = h.tpkg("pack", bad_root, "-o", f"{T}/x.tpkg")
        h.check("pack refuses a root entry named .torshpkg (exit 2), no output",
                r.returncode == 2 and not os.path.exists(f"{T}/x.tpkg") and not leftovers(T),
                f"exit {r.returncode}: {tail(r.stderr, 200)}")
        ok_nested = os.path.join(T, "nested-reserved")
        write(f"{ok_nested}/sub/.torshpkg", b"fine below the root")
        r = h.tpkg("pack", ok_nested, "-o", f"{T}/nested.tpkg", "-q")
        h.check("a .torshpkg below the root is packed", r.returncode == 0, f"exit {r.returncode}: {tail(r.stderr)}")

        r = h.tpkg("pack", src, "-o", f"{T}/ok.tpkg", "--version", "1.0.0-alpha.1+build.7", "--depends",
                   "tokenizer-base@^1.2", "--depends", "x@>=1.0.0 <2.0.0", "--depends", "plain", "-q")
        h.check("pack accepts --version 1.0.0-alpha.1+build.7 and good --depends", r.returncode == 0, tail(r.stderr))
        info = inspect_json(h, f"{T}/ok.tpkg") if r.returncode == 0 else None
        if info:
            m = info["manifest"]
            h.check("manifest version and dependencies as given",
                    m.get("version") == "1.0.0-alpha.1+build.7" and
                    [d.get("name") for d in m.get("dependencies", [])] == ["tokenizer-base", "x", "plain"] and
                    m["dependencies"][0].get("range") == "^1.2" and m["dependencies"][1].get("range") == ">=1.0.0 <2.0.0",
                    f"{m.get('version')}, {m.get('dependencies')}")

        # --exclude
        ex = os.path.join(T, "ex")
        write(f"{ex}/keep.txt", b"keep")
        write(f"{ex}/skip.log", b"log")
        write(f"{ex}/sub/keep.json", b"{}")
        write(f"{ex}/sub/deep/skip.log", b"log")
        write(f"{ex}/cache/blob.bin", b"cached")
        write(f"{ex}/sub/cache/keep-or-not.bin", b"?")
        r = h.tpkg("pack", ex, "-o", f"{T}/ex.tpkg", "--exclude", "*.log", "--exclude", "cache", "-q")
        h.check("pack with --exclude '*.log' --exclude cache exits 0", r.returncode == 0, tail(r.stderr))
        exi = inspect_json(h, f"{T}/ex.tpkg") if r.returncode == 0 else None
        if exi:
            files = sorted(exi["manifest"]["files"])
            h.check("--exclude skips matching files at every depth and the excluded directory",
                    files == ["keep.txt", "sub/keep.json"], f"{files}")
            r = h.tpkg("ls", "-R", f"{T}/ex.tpkg")
            h.check("ls -R of the excluded package shows no .log and no cache",
                    r.returncode == 0 and ".log" not in r.stdout and "blob.bin" not in r.stdout and
                    "keep.json" in r.stdout, f"{r.stdout!r}")

        h.section("SIGINT and SIGTERM during pack")
        big = os.path.join(T, "big")
        h.gen_model(big, "--weights-size", "96M", "--small-files", "0", "--seed", "4")
        for sig, want in ((signal.SIGINT, 130), (signal.SIGTERM, None)):
            outdir = os.path.join(T, f"out-{sig.name}")
            os.makedirs(outdir)
            target = os.path.join(outdir, "big.tpkg")
            p = subprocess.Popen([TORSHPKG, "pack", big, "-o", target, "--level", "19", "--threads", "1"],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 10
            while not leftovers(outdir) and time.monotonic() < deadline and p.poll() is None:
                time.sleep(0.01)
            started = bool(leftovers(outdir))
            time.sleep(0.3)
            still_running = p.poll() is None
            p.send_signal(sig)
            try:
                _, err = p.communicate(timeout=60)
                rc = p.returncode
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
                rc = None
            err = err.decode("utf-8", "replace")
            h.check(f"{sig.name} after 0.3 s: pack was still running with a temp file", started and still_running,
                    f"temp file seen {started}, running {still_running}")
            h.check(f"{sig.name}: pack stops {'with exit 130' if want else 'with a non-zero exit'}",
                    rc is not None and ((rc == want) if want else rc != 0), f"exit {rc}: {tail(err, 200)}")
            h.check(f"{sig.name}: no output and no *.tmp.* left", os.listdir(outdir) == [], f"{os.listdir(outdir)}")

        h.section("inspect --json against the source")
        tree = os.path.join(T, "tree")
        write(f"{tree}/weights/model.safetensors", b"")  # replaced below
        h.gen_model(os.path.join(tree, "weights"), "--weights-size", "6M", "--small-files", "30", "--seed", "8")
        h.gen_model(os.path.join(tree, "sharded"), "--weights-size", "5M", "--shards", "3", "--dtype", "fp32",
                    "--small-files", "0", "--seed", "9")
        h.gen_model(os.path.join(tree, "half"), "--weights-size", "2M", "--dtype", "fp16", "--small-files", "0")
        dup = rnd.randbytes(3 << 20)
        write(f"{tree}/dup/one.bin", dup)
        write(f"{tree}/dup/two.bin", dup)
        write(f"{tree}/notes/empty.txt", b"")
        os.makedirs(f"{tree}/notes/emptydir")
        os.symlink("../dup/one.bin", f"{tree}/notes/link")
        env = {"SOURCE_DATE_EPOCH": "1700000000"}
        p1, p2 = os.path.join(T, "t1.tpkg"), os.path.join(T, "t2.tpkg")
        r = h.tpkg("pack", tree, "-o", p1, "--name", "cli-test", "--version", "3.1.4", "--description", "d e s c",
                   "--author", "Ada", "--author", "Linus", "--license", "MIT", "-q", env=env, timeout=300)
        h.check("pack of the model tree exits 0", r.returncode == 0, tail(r.stderr))
        r2 = h.tpkg("pack", tree, "-o", p2, "--name", "cli-test", "--version", "3.1.4", "--description", "d e s c",
                    "--author", "Ada", "--author", "Linus", "--license", "MIT", "-q", "--threads", "1", env=env,
                    timeout=300)
        if r.returncode == 0 and r2.returncode == 0:
            h.check("with SOURCE_DATE_EPOCH two packs (2 threads vs 1) are byte-identical",
                    sha256_file(p1) == sha256_file(p2))
        ti = inspect_json(h, p1) if r.returncode == 0 else None
        if ti:
            entries = walk(tree)
            regs = [p for p in entries if p and stat.S_ISREG(os.lstat(os.path.join(tree, p)).st_mode)]
            dirs = [p for p in entries if stat.S_ISDIR(os.lstat(os.path.join(tree, p) if p else tree).st_mode)]
            links = [p for p in entries if p and stat.S_ISLNK(os.lstat(os.path.join(tree, p)).st_mode)]
            sizes = {p: os.path.getsize(os.path.join(tree, p)) for p in regs}
            cs = ti.get("chunk_size")
            want_chunks = sum((s + cs - 1) // cs for s in sizes.values()) if cs else None
            h.check("inspect: files = regular files in the source", ti.get("files") == len(regs),
                    f"{ti.get('files')} vs {len(regs)}")
            h.check("inspect: directories = directories in the source (with or without the root)",
                    ti.get("directories") in (len(dirs), len(dirs) - 1), f"{ti.get('directories')} vs {len(dirs)}")
            h.check("inspect: symlinks", ti.get("symlinks") == len(links), f"{ti.get('symlinks')} vs {len(links)}")
            h.check("inspect: raw_bytes = sum of file sizes", ti.get("raw_bytes") == sum(sizes.values()),
                    f"{ti.get('raw_bytes')} vs {sum(sizes.values())}")
            h.check("inspect: chunks = sum of ceil(size / chunk_size)", cs == 1 << 20 and ti.get("chunks") == want_chunks,
                    f"{ti.get('chunks')} vs {want_chunks}, chunk_size {cs}")
            h.check("inspect: package_bytes is the file size, ratio = package_bytes / raw_bytes",
                    ti.get("package_bytes") == os.path.getsize(p1) and
                    abs(ti.get("ratio", 0) - os.path.getsize(p1) / sum(sizes.values())) < 1e-3,
                    f"{ti.get('package_bytes')}, {ti.get('ratio')}")
            h.check("inspect: codec counts add up to chunks", sum(ti.get("codecs", {}).values()) == ti.get("chunks"),
                    f"{ti.get('codecs')}")
            h.check("inspect: 0 < stored_bytes < package_bytes",
                    0 < ti.get("stored_bytes", 0) < ti.get("package_bytes", 0), f"{ti.get('stored_bytes')}")
            h.check("inspect: format_version 1.x, unsigned, root_sha256 is 64 hex digits",
                    str(ti.get("format_version", "")).startswith("1.") and ti.get("signed") is False and
                    re.fullmatch(r"[0-9a-f]{64}", ti.get("root_sha256", "")), f"{ti.get('format_version')}")
            h.check("dedup: two identical 3 MiB files give unique_chunks < chunks and dedup_saved_bytes > 0",
                    ti.get("unique_chunks", 0) <= ti.get("chunks", 0) - 3 and ti.get("dedup_saved_bytes", 0) >= 3 << 20,
                    f"chunks {ti.get('chunks')}, unique {ti.get('unique_chunks')}, saved {ti.get('dedup_saved_bytes')}")
            m = ti["manifest"]
            h.check("manifest: name, version, description, authors, license as given",
                    (m.get("name"), m.get("version"), m.get("description"), m.get("authors"), m.get("license")) ==
                    ("cli-test", "3.1.4", "d e s c", ["Ada", "Linus"], "MIT"), f"{m}"[:300])
            h.check("manifest: created honours SOURCE_DATE_EPOCH (RFC 3339 UTC)",
                    m.get("created") == "2023-11-14T22:13:20Z", f"{m.get('created')}")
            h.check("manifest: manifest_version 1, tool torshpkg, chunk_size, dependencies []",
                    m.get("manifest_version") == 1 and str(m.get("tool", "")).startswith("torshpkg") and
                    m.get("chunk_size") == cs and m.get("dependencies") == [], f"{m.get('tool')}")
            mf = m.get("files", {})
            h.check("manifest: files lists exactly the regular files", sorted(mf) == sorted(regs),
                    f"extra {sorted(set(mf) - set(regs))[:3]}, missing {sorted(set(regs) - set(mf))[:3]}")
            bad = [p for p in regs if p in mf and (mf[p].get("size") != sizes[p] or
                                                   mf[p].get("sha256") != sha256_file(os.path.join(tree, p)))]
            h.check("manifest: size and sha256 of every file match the source", not bad, f"{bad[:5]}")
            kinds = {"weights/model.safetensors": "weights", "weights/config.json": "config",
                     "weights/tokenizer.json": "tokenizer", "weights/tokenizer_config.json": "tokenizer",
                     "weights/merges.txt": "tokenizer", "weights/vocab.json": "tokenizer",
                     "weights/modeling_torsh.py": "code", "sharded/model-00002-of-00003.safetensors": "weights",
                     "sharded/model.safetensors.index.json": "config", "notes/empty.txt": "data"}
            wrong = {p: mf.get(p, {}).get("kind") for p, k in kinds.items() if mf.get(p, {}).get("kind") != k}
            h.check("manifest: kinds of well-known files", not wrong, f"{wrong}")
            valid = {"weights", "code", "config", "tokenizer", "data", "other"}
            h.check("manifest: every kind is one of the six", all(v.get("kind") in valid for v in mf.values()))
            st_files = [p for p in regs if p.endswith(".safetensors")]
            h.check("generated: 1 + 3 + 1 safetensors files", len(st_files) == 5, f"{st_files}")
            for p in st_files:
                want = safetensors_summary(os.path.join(tree, p))
                got = mf.get(p, {}).get("safetensors")
                h.check(f"manifest safetensors summary of {p} equals the header's "
                        f"({want['tensors']} tensors, {want['parameters']} parameters, {want['dtypes']})",
                        got == want, f"got {got}")
            nost = [p for p in regs if not p.endswith(".safetensors") and "safetensors" in mf.get(p, {})]
            h.check("no safetensors summary on other files", not nost, f"{nost[:3]}")

            r = h.tpkg("inspect", p1)
            h.check("inspect (text) exits 0 and shows the name and version",
                    r.returncode == 0 and "cli-test" in r.stdout and "3.1.4" in r.stdout, tail(r.stderr))

        h.section("ls, cat, extract")
        r = h.tpkg("ls", pkg)
        names = r.stdout.split()
        h.check("ls lists the root", r.returncode == 0 and all(n in names for n in
                                                                 ("a.txt", "dir", "empty", "emptydir", "link-b")),
                f"{r.stdout!r}")
        h.check("ls does not show .torshpkg", ".torshpkg" not in r.stdout)
        r = h.tpkg("ls", pkg, "dir")
        h.check("ls PKG dir lists the directory", r.returncode == 0 and "b.json" in r.stdout and
                "deeper" in r.stdout and "a.txt" not in r.stdout, f"{r.stdout!r}")
        r = h.tpkg("ls", "-R", pkg)
        h.check("ls -R reaches nested files", r.returncode == 0 and "c.py" in r.stdout, f"{r.stdout!r}")
        r = h.tpkg("ls", "-l", pkg, "dir/deeper")
        h.check("ls -l shows modes", r.returncode == 0 and "rwxr-xr-x" in r.stdout, f"{r.stdout!r}")
        r = h.tpkg("cat", pkg, "a.txt", "dir/b.json", "empty", "link-b", binary=True)
        h.check("cat of several paths (and a symlink inside the package) concatenates them",
                r.returncode == 0 and r.stdout == b"alpha\n" + b'{"b": 1}\n' + b'{"b": 1}\n',
                f"exit {r.returncode}: {r.stdout[:100]!r} {tail(r.stderr)}")
        r = h.tpkg("cat", pkg, "link-dir/deeper/c.py", binary=True)
        h.check("cat follows a relative symlink to a directory in the middle of the path",
                r.returncode == 0 and r.stdout == b"print('c')\n", f"exit {r.returncode}: {tail(r.stderr)}")
        dest = os.path.join(T, "dest")
        write(f"{dest}/a.txt", b"precious")
        r = h.tpkg("extract", pkg, dest)
        with open(f"{dest}/a.txt", "rb") as f:
            kept = f.read()
        h.check("extract never overwrites: fails on an existing file and leaves it alone",
                r.returncode not in (0, None) and kept == b"precious" and r.stderr.strip(),
                f"exit {r.returncode}, a.txt {kept!r}: {tail(r.stderr, 200)}")
        dest2 = os.path.join(T, "dest2")
        r = h.tpkg("extract", pkg, dest2)
        rd = h.run(["diff", "-r", "--no-dereference", src, dest2])
        h.check("extract to a new directory reproduces the tree", r.returncode == 0 and rd.returncode == 0,
                f"{tail(r.stderr)} {tail(rd.stdout)}")
        dest3 = os.path.join(T, "dest3")
        os.makedirs(dest3)
        r = h.tpkg("extract", pkg, dest3)
        h.check("extract into an existing empty directory works", r.returncode == 0, tail(r.stderr))
        r = h.tpkg("verify", pkg, "--threads", "1")
        h.check("verify --threads 1 exits 0", r.returncode == 0, tail(r.stderr))

        # Output inside the tree being packed: must not hang or pack itself.
        inside = os.path.join(T, "self")
        write(f"{inside}/data.bin", rnd.randbytes(3 << 20))
        r = h.tpkg("pack", inside, "-o", f"{inside}/self.tpkg", "-q", timeout=120)
        ok = r.returncode is not None
        if ok and r.returncode == 0:
            si = inspect_json(h, f"{inside}/self.tpkg")
            ok = si is not None and not any(k.startswith("self.tpkg") for k in si["manifest"]["files"])
        h.check("pack with the output inside the source directory terminates and never packs itself", ok,
                f"exit {r.returncode}: {tail(r.stderr)}")
        h.check("... and leaves no temp file", not leftovers(inside), f"{os.listdir(inside)}")


if __name__ == "__main__":
    main()
