#!/usr/bin/env python3
"""torshpkg pack: symbolic links (-L/--dereference, --no-dereference, links that leave the tree,
--strict, the Hugging Face cache layout), the output (refused without --force, a directory, an
unwritable place, checked before the tree is read; -o - to a pipe, a file and a terminal), the
output and its temporary files left out of a source that contains them, and --dry-run.

Every tree is made here from small files; the Hugging Face cache (blobs/ and snapshots/REV/
symlinks) is built by hand. Environment: TORSHPKG (set by meson).
"""
import glob
import hashlib
import json
import os
import pty
import struct
import subprocess
import sys
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tpkgtest import TORSHPKG, Harness, inspect_json, tail, write  # noqa: E402


def read(path):
    with open(path, "rb") as f:
        return f.read()


def leftovers(d):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(d, "*.tmp.*")))


def safetensors(values):
    """A tiny valid safetensors file: one F32 tensor."""
    data = struct.pack(f"<{len(values)}f", *values)
    header = json.dumps({"w": {"dtype": "F32", "shape": [len(values)], "data_offsets": [0, len(data)]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data


def hf_cache(root):
    """hub/models--org--tiny: blobs named by their SHA-256, a snapshot of symlinks into them, refs/main.
    Returns (snapshot dir, {path in the snapshot: bytes})."""
    repo = os.path.join(root, "hub", "models--org--tiny")
    rev = "0123456789abcdef0123456789abcdef01234567"
    files = {
        "config.json": b'{"architectures": ["TinyModel"], "model_type": "tiny"}\n',
        "model.safetensors": safetensors([0.5, -1.25, 3.0, 0.0]),
        "tokenizer/vocab.txt": b"a\nb\nc\n",
    }
    snap = os.path.join(repo, "snapshots", rev)
    for rel, data in files.items():
        blob = hashlib.sha256(data).hexdigest()
        write(os.path.join(repo, "blobs", blob), data)
        link = os.path.join(snap, rel)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        up = "../" * (rel.count("/") + 2)
        os.symlink(f"{up}blobs/{blob}", link)
    write(os.path.join(repo, "refs", "main"), rev.encode())
    return snap, files


def cat(h, pkg, path):
    r = h.tpkg("cat", pkg, path, binary=True)
    return r.stdout if r.returncode == 0 else None


def entry_type(h, pkg, path):
    """'-', 'd' or 'l' from ls -l of the parent directory (ls -l of a directory lists its contents),
    None when the path is not in the package."""
    parent, name = os.path.split(path)
    r = h.tpkg("ls", "-l", pkg, *([parent] if parent else []))
    for line in r.stdout.splitlines() if r.returncode == 0 else []:
        # Only the mode's first letter and the name at the end: the columns between may change.
        if line.endswith(" " + name) or f" {name} -> " in line:
            return line[:1]
    return None


def main():
    with Harness("pack_ux", deadline=540) as h:
        T = h.tmp

        h.section("Hugging Face cache snapshot: dereferenced by default")
        snap, hf_files = hf_cache(T)
        pkg = os.path.join(T, "hf.tpkg")
        r = h.tpkg("pack", snap, "-o", pkg, "-q")
        notes = [line for line in r.stderr.splitlines() if "Hugging Face cache snapshot" in line]
        h.check("pack of snapshots/REV exits 0 and says once that it follows the links",
                r.returncode == 0 and len(notes) == 1 and "-L" in notes[0], f"exit {r.returncode}: {tail(r.stderr)}")
        h.check("... with no warning about dangling links", "dangle" not in r.stderr, tail(r.stderr))
        info = inspect_json(h, pkg) if r.returncode == 0 else None
        if info:
            mf = info["manifest"]["files"]
            h.check("the package has no symlinks and every snapshot file as a regular file",
                    info.get("symlinks") == 0 and sorted(mf) == sorted(hf_files), f"{info.get('symlinks')}, {sorted(mf)}")
            h.check("manifest sizes and SHA-256 are the blobs'",
                    all(mf[p]["size"] == len(d) and mf[p]["sha256"] == hashlib.sha256(d).hexdigest()
                        for p, d in hf_files.items() if p in mf), f"{mf}")
            h.check("cat gives each blob's bytes", all(cat(h, pkg, p) == d for p, d in hf_files.items()))
            h.check("model.safetensors is recognised (kind weights, tensor summary)",
                    mf.get("model.safetensors", {}).get("kind") == "weights"
                    and mf.get("model.safetensors", {}).get("safetensors", {}).get("tensors") == 1, f"{mf}")

        pkg = os.path.join(T, "hf-links.tpkg")
        r = h.tpkg("pack", snap, "-o", pkg, "-q", "--no-dereference")
        warned = [line for line in r.stderr.splitlines() if "points outside" in line]
        h.check("--no-dereference: exit 0, one warning per link leaving the tree, naming it",
                r.returncode == 0 and len(warned) == 3 and all(any(p in w for w in warned) for p in hf_files)
                and "Hugging Face" not in r.stderr, f"exit {r.returncode}: {tail(r.stderr)}")
        info = inspect_json(h, pkg) if r.returncode == 0 else None
        if info:
            h.check("--no-dereference keeps the three links", info.get("symlinks") == 3, f"{info.get('symlinks')}")

        pkg = os.path.join(T, "hf-strict.tpkg")
        r = h.tpkg("pack", snap, "-o", pkg, "-q", "--no-dereference", "--strict")
        h.check("--no-dereference --strict: exit 2 naming a link, nothing written",
                r.returncode == 2 and "--strict" in r.stderr and snap in r.stderr and not os.path.exists(pkg)
                and not leftovers(T), f"exit {r.returncode}: {tail(r.stderr)}")
        r = h.tpkg("pack", snap, "-o", pkg, "-q", "--strict")
        h.check("--strict accepts the snapshot when it is dereferenced", r.returncode == 0, tail(r.stderr))
        r = h.tpkg("pack", os.path.dirname(os.path.dirname(snap)), "-o", os.path.join(T, "repo.tpkg"), "-q", "--strict")
        h.check("the whole models--ORG--NAME directory: its links stay inside, no note, --strict passes",
                r.returncode == 0 and "Hugging Face" not in r.stderr and "outside" not in r.stderr, tail(r.stderr))
        r = h.tpkg("pack", snap, "-o", os.path.join(T, "x.tpkg"), "-L", "--no-dereference")
        h.check("-L with --no-dereference: exit 2", r.returncode == 2 and not os.path.exists(os.path.join(T, "x.tpkg")),
                f"exit {r.returncode}")

        h.section("symlinks in an ordinary tree")
        src = os.path.join(T, "links")
        write(os.path.join(T, "outside.txt"), b"from outside\n")
        write(f"{src}/a.txt", b"alpha\n")
        write(f"{src}/sub/b.txt", b"beta\n")
        os.symlink("a.txt", f"{src}/inside")
        os.symlink("../a.txt", f"{src}/sub/up-inside")
        os.symlink("../outside.txt", f"{src}/escape")
        os.symlink(os.path.join(T, "outside.txt"), f"{src}/absolute")
        os.symlink("sub", f"{src}/dirlink")
        pkg = os.path.join(T, "links.tpkg")
        r = h.tpkg("pack", src, "-o", pkg, "-q")
        warned = [line for line in r.stderr.splitlines() if "points outside" in line]
        h.check("without -L: exit 0, a warning for each link that leaves the tree and none for the others",
                r.returncode == 0 and len(warned) == 2 and any("escape" in w for w in warned)
                and any("absolute" in w for w in warned) and "-L" in warned[0], f"exit {r.returncode}: {tail(r.stderr)}")
        if r.returncode == 0:
            h.check("links inside the tree stay links",
                    [entry_type(h, pkg, p) for p in ("inside", "sub/up-inside", "dirlink", "escape")] == ["l"] * 4)
        r = h.tpkg("pack", src, "-o", os.path.join(T, "links-strict.tpkg"), "-q", "--strict")
        h.check("--strict refuses a link that leaves the tree: exit 2, names it, writes nothing",
                r.returncode == 2 and ("escape" in r.stderr or "absolute" in r.stderr)
                and not os.path.exists(os.path.join(T, "links-strict.tpkg")) and not leftovers(T),
                f"exit {r.returncode}: {tail(r.stderr)}")
        pkg = os.path.join(T, "links-L.tpkg")
        r = h.tpkg("pack", src, "-o", pkg, "-q", "-L", "--strict")
        h.check("-L --strict: exit 0, no warning", r.returncode == 0 and not r.stderr.strip(), tail(r.stderr))
        info = inspect_json(h, pkg) if r.returncode == 0 else None
        if info:
            h.check("-L: no symlinks left", info.get("symlinks") == 0, f"{info.get('symlinks')}")
            h.check("-L: every link is its target's content",
                    cat(h, pkg, "escape") == b"from outside\n" and cat(h, pkg, "absolute") == b"from outside\n"
                    and cat(h, pkg, "inside") == b"alpha\n" and cat(h, pkg, "sub/up-inside") == b"alpha\n")
            h.check("-L: a link to a directory becomes a directory with its files",
                    entry_type(h, pkg, "dirlink") == "d" and cat(h, pkg, "dirlink/b.txt") == b"beta\n")
        os.symlink("no/such/file", f"{src}/dangling")
        pkg = os.path.join(T, "dangling.tpkg")
        r = h.tpkg("pack", src, "-o", pkg, "-q", "-L")
        h.check("-L with a dangling link: exit 0, a warning naming it, kept as a link",
                r.returncode == 0 and "dangling" in r.stderr and "kept as a symlink" in r.stderr
                and entry_type(h, pkg, "dangling") == "l", f"exit {r.returncode}: {tail(r.stderr)}")
        os.unlink(f"{src}/dangling")
        os.symlink("..", f"{src}/sub/loop")
        r = h.tpkg("pack", src, "-o", os.path.join(T, "loop.tpkg"), "-q", "-L")
        h.check("-L with a link to an ancestor: exit 2 naming the loop, nothing written",
                r.returncode == 2 and "loop" in r.stderr and not os.path.exists(os.path.join(T, "loop.tpkg"))
                and not leftovers(T), f"exit {r.returncode}: {tail(r.stderr)}")
        os.unlink(f"{src}/sub/loop")

        h.section("the output: --force, directories, unwritable places, checked first")
        src = os.path.join(T, "small")
        write(f"{src}/a.txt", b"alpha\n")
        write(f"{src}/b.bin", os.urandom(100_000))
        out = os.path.join(T, "out.tpkg")
        r = h.tpkg("pack", src, "-o", out, "-q")
        h.check("first pack exits 0", r.returncode == 0, tail(r.stderr))
        before = read(out)
        write(f"{src}/c.txt", b"new file\n")
        r = h.tpkg("pack", src, "-o", out, "-q")
        h.check("pack onto an existing file: exit 2, says --force replaces it, the file is untouched",
                r.returncode == 2 and "--force" in r.stderr and out in r.stderr and read(out) == before
                and not leftovers(T), f"exit {r.returncode}: {tail(r.stderr)}")
        r = h.tpkg("pack", src, "-o", out, "-q", "--force")
        info = inspect_json(h, out) if r.returncode == 0 else None
        h.check("--force replaces it", r.returncode == 0 and info and "c.txt" in info["manifest"]["files"]
                and not leftovers(T), f"exit {r.returncode}: {tail(r.stderr)}")
        os.symlink("out.tpkg", os.path.join(T, "out-link.tpkg"))
        r = h.tpkg("pack", src, "-o", os.path.join(T, "out-link.tpkg"), "-q")
        h.check("an existing symlink (even to a package) is refused without --force", r.returncode == 2
                and "--force" in r.stderr, f"exit {r.returncode}: {tail(r.stderr)}")

        # The bad name makes the walk fail: an output refusal naming the output shows it came first.
        bad = os.path.join(T, "badname")
        write(f"{bad}/ok.txt", b"ok")
        write(os.path.join(bad.encode(), b"caf\xe9"), b"latin-1 name")
        outdir = os.path.join(T, "outdir")
        os.makedirs(outdir)
        r = h.tpkg("pack", bad, "-o", outdir)
        h.check("-o a directory: exit 2 'is a directory', before the tree is read, nothing left in it",
                r.returncode == 2 and "is a directory" in r.stderr and "cannot pack this name" not in r.stderr
                and not os.listdir(outdir), f"exit {r.returncode}: {tail(r.stderr)}")
        r = h.tpkg("pack", bad, "-o", out)
        h.check("an existing output is refused before the tree is read", r.returncode == 2 and "--force" in r.stderr
                and "cannot pack this name" not in r.stderr, f"exit {r.returncode}: {tail(r.stderr)}")
        r = h.tpkg("pack", bad, "-o", os.path.join(T, "missing", "o.tpkg"))
        h.check("-o in a directory that does not exist: exit 3 before the tree is read",
                r.returncode == 3 and "missing" in r.stderr and "cannot pack this name" not in r.stderr,
                f"exit {r.returncode}: {tail(r.stderr)}")
        if os.geteuid() != 0:
            ro = os.path.join(T, "readonly")
            os.makedirs(ro)
            os.chmod(ro, 0o555)
            unwritable = os.path.join(ro, "o.tpkg")
        else:  # root writes anywhere the permission bits forbid; procfs refuses new files even to root
            unwritable = "/proc/torshpkg-pack-ux-test.tpkg"
        r = h.tpkg("pack", bad, "-o", unwritable)
        h.check(f"-o {unwritable} (not writable): exit 3 before the tree is read",
                r.returncode == 3 and "cannot pack this name" not in r.stderr and not os.path.exists(unwritable),
                f"exit {r.returncode}: {tail(r.stderr)}")

        if " import " in h.tpkg("--help").stdout:  # not built with -Dzip=disabled
            zpath = os.path.join(T, "small.zip")
            with zipfile.ZipFile(zpath, "w") as z:
                z.writestr("a.txt", b"alpha\n")
            before = read(out)
            r = h.tpkg("import", zpath, "-o", out, "-q")
            h.check("import onto an existing file: exit 2 naming --force, the file kept, nothing unpacked",
                    r.returncode == 2 and "--force" in r.stderr and read(out) == before
                    and not glob.glob(out + ".import.*"), f"exit {r.returncode}: {tail(r.stderr)}")

        h.section("-o -: standard output")
        r = h.tpkg("pack", src, "-o", "-", "-q", binary=True)
        h.check("-o - into a pipe with --filters auto: exit 2 'cannot write a package to a pipe/stdout', no output",
                r.returncode == 2 and b"cannot write a package to a pipe/stdout" in r.stderr and not r.stdout,
                f"exit {r.returncode}: {tail(r.stderr)}")
        r = h.tpkg("pack", src, "-o", "-", "--filters", "none", binary=True)
        streamed = os.path.join(T, "streamed.tpkg")
        with open(streamed, "wb") as f:
            f.write(r.stdout)
        h.check("-o - --filters none into a pipe: exit 0, the summary on stderr, the package on stdout",
                r.returncode == 0 and b"root sha256" in r.stderr and r.stdout[:4] != b"stan", f"exit {r.returncode}")
        rv = h.tpkg("verify", streamed)
        h.check("... and the streamed package verifies and holds the files", rv.returncode == 0
                and cat(h, streamed, "a.txt") == b"alpha\n", f"exit {rv.returncode}: {tail(rv.stderr)}")
        redirected = os.path.join(T, "redirected.tpkg")
        with open(redirected, "wb") as f:
            p = subprocess.run([TORSHPKG, "pack", src, "-o", "-", "-q"], stdout=f, stderr=subprocess.PIPE, timeout=120)
        rv = h.tpkg("verify", redirected)
        h.check("-o - redirected to a file (seekable) works with --filters auto",
                p.returncode == 0 and rv.returncode == 0, f"exit {p.returncode}: {tail(p.stderr)} {tail(rv.stderr)}")
        master, slave = pty.openpty()
        try:
            p = subprocess.run([TORSHPKG, "pack", src, "-o", "-", "-q", "--filters", "none"], stdout=slave,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=120)
        finally:
            os.close(slave)
            os.close(master)
        h.check("-o - on a terminal: exit 2, refused", p.returncode == 2 and b"terminal" in p.stderr,
                f"exit {p.returncode}: {tail(p.stderr)}")

        h.section("the output inside the source")
        selfsrc = os.path.join(T, "self")
        write(f"{selfsrc}/data.bin", os.urandom(50_000))
        write(f"{selfsrc}/self.tpkg.tmp.Ab12Cd", b"left by an interrupted pack")
        write(f"{selfsrc}/sub/x.txt", b"x\n")
        r = h.tpkg("pack", ".", "-o", "self.tpkg", "-q", cwd=selfsrc)
        info = inspect_json(h, os.path.join(selfsrc, "self.tpkg")) if r.returncode == 0 else None
        files = sorted(info["manifest"]["files"]) if info else None
        h.check("pack . -o self.tpkg: exit 0, neither the output nor a stale temporary file is packed",
                files == ["data.bin", "sub/x.txt"], f"exit {r.returncode}: {files} {tail(r.stderr)}")
        r = h.tpkg("pack", ".", "-o", "self.tpkg", "-q", "--force", cwd=selfsrc)
        info = inspect_json(h, os.path.join(selfsrc, "self.tpkg")) if r.returncode == 0 else None
        files = sorted(info["manifest"]["files"]) if info else None
        h.check("pack . --force over its previous output: the old package is not packed",
                files == ["data.bin", "sub/x.txt"], f"exit {r.returncode}: {files} {tail(r.stderr)}")
        r = h.tpkg("pack", selfsrc, "-o", f"{selfsrc}/sub/../sub/nested.tpkg", "-q")
        info = inspect_json(h, f"{selfsrc}/sub/nested.tpkg") if r.returncode == 0 else None
        files = sorted(info["manifest"]["files"]) if info else None
        h.check("output in a subdirectory, spelled differently: left out too (the other files are packed)",
                files == ["data.bin", "self.tpkg", "self.tpkg.tmp.Ab12Cd", "sub/x.txt"],
                f"exit {r.returncode}: {files} {tail(r.stderr)}")
        h.check("no temporary file left in the source", leftovers(selfsrc) == ["self.tpkg.tmp.Ab12Cd"]
                and not leftovers(f"{selfsrc}/sub"), f"{os.listdir(selfsrc)}")
        os.unlink(f"{selfsrc}/sub/nested.tpkg")
        with open(f"{selfsrc}/stdout.tpkg", "wb") as f:
            p = subprocess.run([TORSHPKG, "pack", ".", "-o", "-", "-q"], stdout=f, stderr=subprocess.PIPE,
                               cwd=selfsrc, timeout=120)
        info = inspect_json(h, f"{selfsrc}/stdout.tpkg") if p.returncode == 0 else None
        files = sorted(info["manifest"]["files"]) if info else None
        h.check("-o - redirected into the source: that file is left out",
                files == ["data.bin", "self.tpkg", "self.tpkg.tmp.Ab12Cd", "sub/x.txt"],
                f"exit {p.returncode}: {files} {tail(p.stderr)}")

        h.section("--dry-run")
        ex = os.path.join(T, "ex")
        write(f"{ex}/keep.txt", b"keep")
        write(f"{ex}/skip.log", b"log")
        write(f"{ex}/sub/config.json", b"{}")
        write(f"{ex}/sub/deep/skip.log", b"log")
        write(f"{ex}/cache/blob.bin", b"cached")
        write(f"{ex}/model.safetensors", safetensors([1.0, 2.0]))
        os.symlink("keep.txt", f"{ex}/link")
        listing_before = sorted(os.listdir(T))
        dry_out = os.path.join(T, "dry.tpkg")
        r = h.tpkg("pack", ex, "-o", dry_out, "--dry-run", "--exclude", "*.log", "--exclude", "cache",
                   "--exclude", "nomatch*")
        lines = r.stdout.splitlines()
        rows = {ln.split()[3]: ln.split() for ln in lines if ln.split()[:1] in (["file"], ["dir"], ["symlink"])}
        h.check("--dry-run exits 0 and writes nothing", r.returncode == 0 and not os.path.exists(dry_out)
                and sorted(os.listdir(T)) == listing_before, f"exit {r.returncode}: {tail(r.stderr)}")
        h.check("--dry-run lists each entry with its type, kind and size",
                rows.get("keep.txt") == ["file", "data", "4", "keep.txt"]
                and rows.get("sub/config.json") == ["file", "config", "2", "sub/config.json"]
                and rows.get("model.safetensors", [None, None])[:2] == ["file", "weights"]
                and rows.get("sub/", [None])[0] == "dir" and rows.get("link", [None])[0] == "symlink",
                f"{r.stdout}")
        h.check("--dry-run leaves out what --exclude matched", not any(".log" in k or "cache" in k for k in rows),
                f"{sorted(rows)}")
        text = r.stdout
        h.check("--dry-run says what each --exclude matched (and that one matched nothing)",
                "--exclude '*.log': 2 entries\n  skip.log\n  sub/deep/skip.log\n" in text
                and "--exclude 'cache': 1 entry\n  cache\n" in text and "--exclude 'nomatch*': matched nothing" in text,
                text)
        r = h.tpkg("pack", ex, "--dry-run")
        h.check("--dry-run needs no -o", r.returncode == 0 and "nothing written" in r.stdout, tail(r.stderr))
        r = h.tpkg("pack", ex)
        h.check("without --dry-run, no -o is a usage error (exit 2)", r.returncode == 2 and "-o" in r.stderr,
                f"exit {r.returncode}: {tail(r.stderr)}")
        r = h.tpkg("pack", ex, "-o", out, "--dry-run")
        h.check("--dry-run refuses what the real run would (an existing output without --force)",
                r.returncode == 2 and "--force" in r.stderr, f"exit {r.returncode}: {tail(r.stderr)}")
        r = h.tpkg("pack", snap, "--dry-run")
        h.check("--dry-run of the snapshot: the note, and the links listed as the files they point to",
                r.returncode == 0 and "Hugging Face" in r.stderr and "file    weights" in r.stdout
                and "(from the symlink -> ../../blobs/" in r.stdout and "\nsymlink" not in r.stdout,
                f"exit {r.returncode}: {r.stdout} {tail(r.stderr)}")
        r = h.tpkg("pack", ".", "-o", "self.tpkg", "--force", "--dry-run", cwd=selfsrc)
        h.check("--dry-run of a source holding the output says it is left out",
                r.returncode == 0 and "left out (the output or its temporary file): self.tpkg\n" in r.stdout
                and "self.tpkg.tmp.Ab12Cd" in r.stdout, f"exit {r.returncode}: {r.stdout} {tail(r.stderr)}")


if __name__ == "__main__":
    main()
