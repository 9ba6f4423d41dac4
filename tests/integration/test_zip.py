#!/usr/bin/env python3
"""Zip archives in and out: `torshpkg import` of zips (deflate and stored entries, zip64, unix modes,
symlinks) and refusal of hostile names (path traversal, absolute, duplicates) with nothing left
behind; `torshpkg export` back to a zip (every path, byte, mode and symlink) and to PyTorch's layout
(stored, 64-byte aligned); and with the real PyTorch from Debian: torch.save and torch.package
archives imported, mounted, loaded with PackageImporter from the mount, exported with
--format torch and read by torch.load, outputs compared exactly. Direct mounts of zips (mount.torshpkg
on the .zip/.pt itself): the same trees, damaged entries failing with EIO, hostile archives refused.

Environment: TORSHPKG, MOUNT_TORSHPKG (set by meson). Torch runs under /usr/bin/python3 (Debian's
python3-torch), in a subprocess.
"""
import glob
import os
import random
import stat
import struct
import subprocess
import sys
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tpkgtest import MOUNT, Harness, tail  # noqa: E402

DEBIAN_PYTHON = "/usr/bin/python3"


def zip_contents(path):
    """name -> (bytes, unix mode) of every entry."""
    out = {}
    with zipfile.ZipFile(path) as z:
        for i in z.infolist():
            out[i.filename] = (z.read(i), i.external_attr >> 16)
    return out


def data_offsets(path):
    """Offset of each entry's data, from its local header."""
    d = open(path, "rb").read()
    offs = {}
    with zipfile.ZipFile(path) as z:
        for i in z.infolist():
            n, e = struct.unpack_from("<HH", d, i.header_offset + 26)
            offs[i.filename] = i.header_offset + 30 + n + e
    return offs


def tree(root):
    """relative path -> bytes or ('link', target) for everything under root."""
    out = {}
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            p = os.path.join(dp, n)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isfile(p):
                out[rel] = open(p, "rb").read()
    return out


def main():
    with Harness("zip", deadline=840) as h:
        T = h.tmp
        rnd = random.Random(9)
        mnt = os.path.join(T, "mnt")

        h.section("import a zip with deflated and stored entries, modes, a symlink")
        src = os.path.join(T, "plain.zip")
        members = {
            "config.json": (b'{"a": 1}\n' * 200, zipfile.ZIP_DEFLATED, 0o644),
            "weights/w.bin": (rnd.randbytes(300_000), zipfile.ZIP_STORED, 0o600),
            "tools/run.sh": (b"#!/bin/sh\necho hi\n", zipfile.ZIP_DEFLATED, 0o755),
            "deep/a/b/c.txt": (b"deep\n", zipfile.ZIP_STORED, 0o644),
        }
        with zipfile.ZipFile(src, "w") as z:
            for name, (data, method, mode) in members.items():
                zi = zipfile.ZipInfo(name, date_time=(2024, 5, 6, 7, 8, 10))
                zi.compress_type = method
                zi.external_attr = (stat.S_IFREG | mode) << 16
                z.writestr(zi, data)
            zi = zipfile.ZipInfo("tools/link", date_time=(2024, 5, 6, 7, 8, 10))
            zi.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(zi, b"run.sh")
        pkg = os.path.join(T, "plain.tpkg")
        r = h.tpkg("import", src, "-o", pkg, "-q")
        h.check("import plain.zip exits 0", r.returncode == 0, tail(r.stderr))
        h.check("no temporary directory is left beside the output", not glob.glob(pkg + ".import.*"))
        rc, log = h.mount(pkg, mnt)
        if h.check("the imported package mounts", rc == 0, tail(log)):
            for name, (data, _m, mode) in members.items():
                p = os.path.join(mnt, name)
                ok = os.path.isfile(p) and open(p, "rb").read() == data
                h.check(f"{name}: same bytes through the mount", ok)
                h.check(f"{name}: mode {oct(mode)} kept", stat.S_IMODE(os.lstat(p).st_mode) == mode,
                        oct(stat.S_IMODE(os.lstat(p).st_mode)))
            h.check("the symlink entry is a symlink to run.sh",
                    os.path.islink(os.path.join(mnt, "tools/link")) and os.readlink(os.path.join(mnt, "tools/link")) == "run.sh")
            h.check("the zip's mtime is kept (2024-05-06 07:08:10 UTC)",
                    int(os.stat(os.path.join(mnt, "config.json")).st_mtime) == 1714979290,
                    str(os.stat(os.path.join(mnt, "config.json")).st_mtime))
        h.unmount(mnt)
        j = h.tpkg("inspect", "--json", pkg)
        h.check("the package is named after the zip (plain)", '"name": "plain"' in j.stdout, tail(j.stdout, 200))

        h.section("mount a zip directly: refused unless allow_unsigned, then every entry as it is in the zip")
        r = h.run([MOUNT, src, mnt])
        h.check("mounting a zip without -o allow_unsigned: exit 7, says why and what to do",
                r.returncode == 7 and "zip archive" in r.stderr and "allow_unsigned" in r.stderr,
                f"exit {r.returncode}: {tail(r.stderr)}")
        h.check("... and nothing is mounted", not os.path.ismount(mnt))
        rc, log = h.mount(src, mnt)
        if h.check("mount.torshpkg plain.zip -o allow_unsigned mounts", rc == 0, tail(log)):
            for name, (data, _m, mode) in members.items():
                p = os.path.join(mnt, name)
                h.check(f"direct: {name}: same bytes", os.path.isfile(p) and open(p, "rb").read() == data)
                h.check(f"direct: {name}: mode {oct(mode)}", stat.S_IMODE(os.lstat(p).st_mode) == mode,
                        oct(stat.S_IMODE(os.lstat(p).st_mode)))
            h.check("direct: the symlink entry is a symlink to run.sh",
                    os.path.islink(os.path.join(mnt, "tools/link")) and os.readlink(os.path.join(mnt, "tools/link")) == "run.sh")
            h.check("direct: implied directories exist (deep/a/b)", os.path.isdir(os.path.join(mnt, "deep/a/b")))
            h.check("direct: the zip's mtime (2024-05-06 07:08:10)",
                    int(os.stat(os.path.join(mnt, "config.json")).st_mtime) == 1714979290)
            r = h.run(["getfattr", "-n", "user.torshpkg.source", "--only-values", mnt])
            h.check("direct: the root says its source is a zip (user.torshpkg.source)", r.stdout.strip() == "zip",
                    tail(r.stdout + r.stderr))
            r = h.run(["getfattr", "-n", "user.torshpkg.root_sha256", mnt])
            h.check("direct: no root digest is claimed for a zip", r.returncode != 0)
        h.unmount(mnt)

        h.section("direct mount: large deflated and stored entries read in any order; damage is EIO")
        big_text = b"".join(f"line {i} {rnd.random():.12f}\n".encode() for i in range(260_000))  # ~8 MiB
        big_raw = rnd.randbytes(5_500_000)
        lz = os.path.join(T, "large.zip")
        with zipfile.ZipFile(lz, "w") as z:
            z.writestr("text.txt", big_text, compress_type=zipfile.ZIP_DEFLATED)
            z.writestr("raw.bin", big_raw, compress_type=zipfile.ZIP_STORED)
            z.writestr("small.txt", b"small entry\n" * 10, compress_type=zipfile.ZIP_DEFLATED)
            z.writestr("small.bin", b"stored small entry\n" * 10, compress_type=zipfile.ZIP_STORED)
        h.check("the deflated entry spans several 1 MiB chunks", len(big_text) > 5 * 2**20, str(len(big_text)))
        rc, log = h.mount(lz, mnt)
        if h.check("large.zip mounts", rc == 0, tail(log)):
            ok = True
            for name, data in (("text.txt", big_text), ("raw.bin", big_raw)):
                with open(os.path.join(mnt, name), "rb") as f:
                    # Far chunk first, then back to the start (the deflate cursor restarts), then sequential.
                    for off in (len(data) - 70_000, 3 * 2**20 + 17, 10, 2**20 - 5, 4 * 2**20 + 1, 0):
                        f.seek(off)
                        got = f.read(131_072)
                        if got != data[off:off + 131_072]:
                            ok = False
                            h.note(f"{name}: wrong bytes at {off}")
                    f.seek(0)
                    ok = ok and f.read() == data
            h.check("out-of-order and sequential reads of both entries return the zip's bytes", ok)
        h.unmount(mnt)
        raw = bytearray(open(lz, "rb").read())
        offs = data_offsets(lz)
        with zipfile.ZipFile(lz) as z:
            info = {i.filename: i for i in z.infolist()}
        bad_zip = os.path.join(T, "damaged.zip")
        raw[offs["small.bin"] + 3] ^= 0x20  # stored: CRC-32 catches it
        raw[offs["small.txt"] + info["small.txt"].compress_size - 2] ^= 0x55  # deflated: CRC or deflate catches it
        raw[offs["text.txt"] + info["text.txt"].compress_size // 2] ^= 0x55
        open(bad_zip, "wb").write(bytes(raw))
        rc, log = h.mount(bad_zip, mnt)
        if h.check("a zip with damaged entry data still mounts (data is checked on read)", rc == 0, tail(log)):
            for name in ("small.bin", "small.txt", "text.txt"):
                r = h.run(["cat", os.path.join(mnt, name)], binary=True)
                h.check(f"damaged {name}: reading it fails with EIO", r.returncode != 0 and b"Input/output error" in r.stderr,
                        f"exit {r.returncode}: {tail(r.stderr.decode(errors='replace'))}")
            h.check("the undamaged stored entry still reads exactly",
                    open(os.path.join(mnt, "raw.bin"), "rb").read() == big_raw)
        h.unmount(mnt)

        h.section("export back to a zip")
        out = os.path.join(T, "back.zip")
        r = h.tpkg("export", pkg, "-o", out)
        h.check("export -o back.zip exits 0", r.returncode == 0, tail(r.stderr))
        with zipfile.ZipFile(out) as z:
            h.check("python's zipfile finds no CRC error", z.testzip() is None)
        got = zip_contents(out)
        for name, (data, _m, mode) in members.items():
            h.check(f"export: {name} has the same bytes and mode",
                    name in got and got[name][0] == data and stat.S_IMODE(got[name][1]) == mode,
                    f"{name in got and oct(got[name][1])}")
        h.check("export: the symlink is a symlink entry with its target",
                "tools/link" in got and stat.S_ISLNK(got["tools/link"][1]) and got["tools/link"][0] == b"run.sh")
        h.check("export: directories are listed", "deep/a/b/" in got, str(sorted(got)))
        with zipfile.ZipFile(out) as z:
            methods = {i.filename: i.compress_type for i in z.infolist()}
        h.check("export: text deflated, weights stored",
                methods.get("config.json") == zipfile.ZIP_DEFLATED and methods.get("weights/w.bin") == zipfile.ZIP_STORED,
                str(methods))
        back = os.path.join(T, "back-unzipped")
        with zipfile.ZipFile(out) as z:
            z.extractall(back)
        h.check("unzip of the export matches the original zip's regular files",
                all(open(os.path.join(back, n), "rb").read() == d for n, (d, _x, _y) in members.items()))

        h.section("export --format torch: stored records, data 64-byte aligned")
        tz = os.path.join(T, "back.pt")
        r = h.tpkg("export", pkg, "-o", tz, "--format", "torch")
        h.check("export --format torch exits 0", r.returncode == 0, tail(r.stderr))
        with zipfile.ZipFile(tz) as z:
            h.check("torch layout: zipfile finds no CRC error", z.testzip() is None)
            h.check("torch layout: every record stored, no directory entries",
                    all(i.compress_type == zipfile.ZIP_STORED and not i.filename.endswith("/") for i in z.infolist()))
        offs = data_offsets(tz)
        h.check("torch layout: every record's data starts at a multiple of 64",
                offs and all(o % 64 == 0 for o in offs.values()), str(offs))

        h.section("zip64")
        z64 = os.path.join(T, "z64.zip")
        big = rnd.randbytes(70_000)
        with zipfile.ZipFile(z64, "w", allowZip64=True) as z:
            with z.open("a/big.bin", "w", force_zip64=True) as f:
                f.write(big)
            for i in range(70):
                z.writestr(f"many/{i:03d}.txt", f"{i}\n")
        with open(z64, "rb") as f:
            h.check("the test archive really is zip64 (it has a zip64 extra field)", b"\x01\x00\x10\x00" in f.read())
        p64 = os.path.join(T, "z64.tpkg")
        r = h.tpkg("import", z64, "-o", p64, "-q")
        h.check("import of a zip64 archive exits 0", r.returncode == 0, tail(r.stderr))
        r = h.tpkg("cat", p64, "a/big.bin", binary=True)
        h.check("its big entry reads back exactly", r.returncode == 0 and r.stdout == big)
        rc, log = h.mount(z64, mnt)
        if h.check("the zip64 archive mounts directly", rc == 0, tail(log)):
            h.check("direct: its big entry reads back exactly", open(os.path.join(mnt, "a/big.bin"), "rb").read() == big)
            h.check("direct: all 70 small entries are listed", len(os.listdir(os.path.join(mnt, "many"))) == 70)
        h.unmount(mnt)
        want64 = {i: d for i, (d, _m) in zip_contents(z64).items()}
        for fmt in ("zip", "torch"):
            back64 = os.path.join(T, f"z64-back.{fmt}")
            r = h.tpkg("export", p64, "-o", back64, "--format", fmt)
            got64 = {n: d for n, (d, _m) in zip_contents(back64).items() if not n.endswith("/")} \
                if r.returncode == 0 else {}
            h.check(f"the imported zip64 archive exports (--format {fmt}) with every entry's bytes",
                    r.returncode == 0 and got64 == want64, f"exit {r.returncode}: {tail(r.stderr)}")

        h.section("hostile names are refused, nothing is written")
        bad_cases = {
            "traversal": ["ok.txt", "../evil.txt"],
            "nested traversal": ["a/../../evil.txt"],
            "absolute": ["/etc/evil"],
            "duplicate": ["same.txt", "same.txt"],
            "file and directory": ["x", "x/y"],
            "dot component": ["a/./b"],
            "backslash": ["a\\..\\evil"],
        }
        for label, names in bad_cases.items():
            zp = os.path.join(T, f"bad-{label.replace(' ', '-')}.zip")
            with zipfile.ZipFile(zp, "w") as z:
                for n in names:
                    zi = zipfile.ZipInfo("placeholder")
                    zi.filename = n  # bypass zipfile's own name sanitising
                    z.writestr(zi, b"payload")
            outp = os.path.join(T, f"bad-{label.replace(' ', '-')}.tpkg")
            r = h.tpkg("import", zp, "-o", outp)
            h.check(f"{label} ({names[-1]!r}): import exits 4 and names the entry",
                    r.returncode == 4 and "refusing" in r.stderr, f"exit {r.returncode}: {tail(r.stderr)}")
            h.check(f"{label}: no package and no temporary directory left",
                    not os.path.exists(outp) and not glob.glob(outp + ".import.*") and not glob.glob(outp + ".tmp.*"))
            rc, log = h.mount(zp, mnt)
            h.check(f"{label}: direct mount exits 4 naming the entry, nothing mounted",
                    rc == 4 and "refusing" in log and not os.path.ismount(mnt), f"exit {rc}: {tail(log)}")
        h.check("nothing escaped the temporary directory", not os.path.exists(os.path.join(T, "evil.txt")))
        notzip = os.path.join(T, "not.zip")
        with open(notzip, "wb") as f:
            f.write(b"hello, not a zip")
        r = h.tpkg("import", notzip, "-o", os.path.join(T, "n.tpkg"))
        h.check("a file that is not a zip: exit 4 with a message", r.returncode == 4 and "zip" in r.stderr,
                f"exit {r.returncode}: {tail(r.stderr)}")
        bz = os.path.join(T, "bzip2.zip")
        with zipfile.ZipFile(bz, "w") as z:
            z.writestr("a.txt", b"bzip2 entry\n" * 100, compress_type=zipfile.ZIP_BZIP2)
        rc, log = h.mount(bz, mnt)
        h.check("direct mount of a bzip2 entry: exit 4, names the method and points to import",
                rc == 4 and "method 12" in log and "import" in log, f"exit {rc}: {tail(log)}")
        cut = os.path.join(T, "truncated.zip")
        open(cut, "wb").write(open(src, "rb").read()[:-30])
        rc, log = h.mount(cut, mnt)
        h.check("direct mount of a truncated zip: exit 4", rc == 4 and "zip" in log, f"exit {rc}: {tail(log)}")

        h.section("PyTorch: torch.save and torch.package through import, mount and export")
        if not os.path.exists(DEBIAN_PYTHON):
            h.check("Debian's python3 is installed", False)
            return
        work = os.path.join(T, "torch")
        os.makedirs(work)
        make = r"""
import sys, torch
from torch.package import PackageExporter
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
torch.save(m.state_dict(), "state.pt")
with PackageExporter("model_pkg.pt") as e:
    e.intern("**")
    e.save_pickle("model", "model.pkl", m)
x = torch.randn(5, 16)
torch.save({"x": x, "y": m(x).detach()}, "io.pt")
"""
        r = subprocess.run([DEBIAN_PYTHON, "-c", make], cwd=work, capture_output=True, text=True, timeout=300)
        if not h.check("python3-torch builds a model, torch.save and torch.package files", r.returncode == 0,
                       tail(r.stderr)):
            return
        for name in ("state", "model_pkg"):
            r = h.tpkg("import", os.path.join(work, name + ".pt"), "-o", os.path.join(work, name + ".tpkg"), "-q")
            h.check(f"import {name}.pt exits 0", r.returncode == 0, tail(r.stderr))
        load = r"""
import sys, torch
from torch.package import PackageImporter
imp = PackageImporter(sys.argv[1])
m = imp.load_pickle("model", "model.pkl")
io = torch.load("io.pt")
print("identical" if torch.equal(m(io["x"]), io["y"]) else "DIFFERENT")
"""

        def load_from(directory):
            """Loads the model with PackageImporter from `directory`; prints identical or DIFFERENT."""
            return subprocess.run([DEBIAN_PYTHON, "-c", load, directory], cwd=work, capture_output=True, text=True,
                                  timeout=300)

        rc, log = h.mount(os.path.join(work, "model_pkg.tpkg"), mnt)
        if h.check("the imported torch.package mounts", rc == 0, tail(log)):
            r = load_from(os.path.join(mnt, "model_pkg"))
            h.check("PackageImporter(mountpoint/model_pkg) loads the model and its outputs are identical",
                    r.returncode == 0 and "identical" in r.stdout, tail(r.stderr + r.stdout))
        h.unmount(mnt)
        rc, log = h.mount(os.path.join(work, "model_pkg.pt"), mnt)
        if h.check("the torch.package archive mounts directly", rc == 0, tail(log)):
            r = load_from(os.path.join(mnt, "model_pkg"))
            h.check("direct: PackageImporter(mountpoint/model_pkg) gives identical outputs",
                    r.returncode == 0 and "identical" in r.stdout, tail(r.stderr + r.stdout))
        h.unmount(mnt)
        rc, log = h.mount(os.path.join(work, "state.pt"), mnt)
        if h.check("the torch.save file mounts directly", rc == 0, tail(log)):
            want = zip_contents(os.path.join(work, "state.pt"))
            h.check("direct: every record of state.pt reads back as zipfile reads it",
                    want and all(open(os.path.join(mnt, n), "rb").read() == d for n, (d, _m) in want.items()),
                    str(sorted(want))[:300])
        h.unmount(mnt)
        for name in ("state", "model_pkg"):
            r = h.tpkg("export", os.path.join(work, name + ".tpkg"), "-o", os.path.join(work, name + "-back.pt"),
                       "--format", "torch")
            h.check(f"export {name} --format torch exits 0", r.returncode == 0, tail(r.stderr))
        check = r"""
import torch
from torch.package import PackageImporter
a, b = torch.load("state.pt"), torch.load("state-back.pt")
same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
m = PackageImporter("model_pkg-back.pt").load_pickle("model", "model.pkl")
io = torch.load("io.pt")
print("state same" if same else "state DIFFERENT", "outputs identical" if torch.equal(m(io["x"]), io["y"]) else "outputs DIFFERENT")
"""
        r = subprocess.run([DEBIAN_PYTHON, "-c", check], cwd=work, capture_output=True, text=True, timeout=300)
        h.check("torch.load reads the exported state dict exactly, PackageImporter the exported package",
                r.returncode == 0 and "state same" in r.stdout and "outputs identical" in r.stdout,
                tail(r.stderr + r.stdout))


if __name__ == "__main__":
    main()
