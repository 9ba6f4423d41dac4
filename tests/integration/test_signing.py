#!/usr/bin/env python3
"""Signed packages: keygen, pack --sign, sign (in place and into a copy), verify and inspect with
--pubkey/--trust, and the mount's trust policy (refused unsigned or untrusted, -o pubkey/trust/
allow_unsigned). Tampering anywhere is caught: in the index or manifest (with or without a recomputed
root: the mount is refused), a stripped or foreign signature (refused), or chunk data (only the
damaged range fails with EIO, the rest reads correctly).

Environment: TORSHPKG, MOUNT_TORSHPKG (set by meson).
"""
import errno
import hashlib
import os
import random
import shutil
import stat
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tpkgtest import Harness, inspect_json, tail  # noqa: E402

CHUNK = 64 << 10


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def footer_fields(data: bytes):
    """index_offset, chunk_count, inode_count, strings_size, manifest_size, reserved, sig_off, sig_size."""
    return struct.unpack_from("<8Q", data, len(data) - 128)


def manifest_end(data: bytes) -> int:
    io, cc, ic, ss, ms, _r, _so, _sz = footer_fields(data)
    return io + 56 * cc + 48 * ic + ss + ms


def with_new_root(data: bytearray) -> bytearray:
    """What an attacker without the key can do: make the root digest match the changed index."""
    f = len(data) - 128
    end = manifest_end(data)
    io = footer_fields(data)[0]
    root = hashlib.sha256(bytes(data[:64]) + bytes(data[f:f + 48]) + bytes(data[io:end])).digest()
    data[f + 64:f + 96] = root
    return data


def main():
    with Harness("signing", deadline=540) as h:
        T = h.tmp
        rnd = random.Random(5)
        src = os.path.join(T, "src")
        weights = rnd.randbytes(5 * CHUNK + 123)
        write(os.path.join(src, "model.bin"), weights)
        write(os.path.join(src, "config.json"), b'{"hidden": 64}\n')
        write(os.path.join(src, "tok/vocab.txt"), b"a\nb\nc\n")
        mnt = os.path.join(T, "mnt")

        h.section("keygen")
        k1, k2, k3 = (os.path.join(T, n) for n in ("alice", "bob", "carol"))
        r = h.tpkg("keygen", "-o", k1)
        h.check("keygen -o alice exits 0", r.returncode == 0, tail(r.stderr))
        h.check("alice.key is mode 0600, alice.pub 0644",
                stat.S_IMODE(os.stat(k1 + ".key").st_mode) == 0o600
                and stat.S_IMODE(os.stat(k1 + ".pub").st_mode) == 0o644)
        with open(k1 + ".pub") as f:
            h.check("alice.pub is a PEM public key", f.read().startswith("-----BEGIN PUBLIC KEY-----"))
        r = h.tpkg("keygen", "-o", k1)
        h.check("keygen refuses to overwrite a key (exit 2, names the file)",
                r.returncode == 2 and "alice.key" in r.stderr, f"exit {r.returncode}: {tail(r.stderr)}")
        before = open(k1 + ".key").read()
        h.check("the refused keygen left the key alone", open(k1 + ".key").read() == before)
        pw = os.path.join(T, "pw")
        write(pw, b"correct horse\n")
        r = h.tpkg("keygen", "-o", k2, "--passphrase-file", pw)
        h.check("keygen --passphrase-file writes an encrypted key",
                r.returncode == 0 and "ENCRYPTED" in open(k2 + ".key").read(), tail(r.stderr))
        h.tpkg("keygen", "-o", k3)

        h.section("pack --sign, inspect, verify")
        pkg = os.path.join(T, "signed.tpkg")
        r = h.tpkg("pack", src, "-o", pkg, "--chunk-size", "64K", "--sign", k1 + ".key", "-q")
        h.check("pack --sign alice.key exits 0", r.returncode == 0, tail(r.stderr))
        j = inspect_json(h, pkg)
        sigs = (j or {}).get("signatures", [])
        alice_id = None
        r = h.tpkg("verify", pkg, "--pubkey", k1 + ".pub")
        h.check("verify --pubkey alice.pub: exit 0, names the trusted key",
                r.returncode == 0 and "trusted" in r.stdout, f"exit {r.returncode}: {tail(r.stdout + r.stderr)}")
        for line in r.stdout.splitlines():
            if "signature by" in line:
                alice_id = line.split("signature by ")[1].split(":")[0]
        h.check("inspect --json lists one ed25519 signature by alice's key id",
                j and j.get("signed") is True and len(sigs) == 1 and sigs[0]["algorithm"] == "ed25519"
                and sigs[0]["key_id"] == alice_id, f"{sigs} vs {alice_id}")
        r = h.tpkg("inspect", pkg, "--pubkey", k1 + ".pub")
        h.check("inspect --pubkey shows the signature as valid and trusted",
                r.returncode == 0 and "valid, trusted" in r.stdout, tail(r.stdout))
        r = h.tpkg("verify", pkg, "--pubkey", k3 + ".pub")
        h.check("verify with another key: exit 7, says untrusted",
                r.returncode == 7 and "untrusted" in r.stderr, f"exit {r.returncode}: {tail(r.stderr)}")
        r = h.tpkg("verify", pkg, "--trust", os.path.join(T, "empty-dir-does-not-exist"))
        h.check("verify --trust with a missing directory: a usage error (a typo is not 'no keys'), exit 2",
                r.returncode == 2 and "does not exist" in r.stderr, f"exit {r.returncode}: {tail(r.stderr)}")
        r = h.tpkg("verify", pkg)
        h.check("verify without keys reports the signature and exits 0 (nothing demanded)",
                r.returncode == 0 and "untrusted key" in r.stdout, f"exit {r.returncode}: {tail(r.stdout)}")

        h.section("sign")
        r = h.tpkg("sign", pkg, "--key", k2 + ".key")
        h.check("sign with an encrypted key and no passphrase (no tty): exit 2, asks for --passphrase-file",
                r.returncode == 2 and "passphrase" in r.stderr, f"exit {r.returncode}: {tail(r.stderr)}")
        bad_pw = os.path.join(T, "badpw")
        write(bad_pw, b"wrong\n")
        r = h.tpkg("sign", pkg, "--key", k2 + ".key", "--passphrase-file", bad_pw)
        h.check("sign with a wrong passphrase: exit 2, says so", r.returncode == 2 and "passphrase" in r.stderr,
                f"exit {r.returncode}: {tail(r.stderr)}")
        size0 = os.path.getsize(pkg)
        head_before = open(pkg, "rb").read()[:manifest_end(open(pkg, "rb").read())]
        r = h.tpkg("sign", pkg, "--key", k2 + ".key", "--passphrase-file", pw)
        data = open(pkg, "rb").read()
        h.check("sign adds bob's signature in place", r.returncode == 0, tail(r.stderr))
        h.check("signing rewrote only the tail: everything up to the manifest end is unchanged, +104 bytes",
                data[:manifest_end(data)] == head_before and len(data) == size0 + 104, f"{size0} -> {len(data)}")
        r = h.tpkg("sign", pkg, "--key", k2 + ".key", "--passphrase-file", pw)
        j = inspect_json(h, pkg)
        h.check("signing again with the same key replaces its signature (still 2)",
                r.returncode == 0 and j and len(j["signatures"]) == 2, f"{j and j['signatures']}")
        for key in (k1, k2):
            r = h.tpkg("verify", pkg, "--pubkey", key + ".pub")
            h.check(f"verify --pubkey {os.path.basename(key)}.pub passes", r.returncode == 0, tail(r.stderr))
        copy = os.path.join(T, "copy.tpkg")
        r = h.tpkg("sign", pkg, "--key", k3 + ".key", "-o", copy)
        h.check("sign -o COPY writes a signed copy and leaves the original alone",
                r.returncode == 0 and open(pkg, "rb").read() == data
                and len((inspect_json(h, copy) or {}).get("signatures", [])) == 3, tail(r.stderr))
        r = h.tpkg("verify", copy, "--pubkey", k3 + ".pub")
        h.check("the copy verifies with carol's key", r.returncode == 0, tail(r.stderr))

        h.section("trust directories")
        tdir = os.path.join(T, "trusted.d")
        os.makedirs(tdir)
        shutil.copy(k1 + ".pub", tdir)
        r = h.tpkg("verify", pkg, "--trust", tdir)
        h.check("verify --trust DIR with alice.pub in it passes", r.returncode == 0, tail(r.stderr))
        os.chmod(tdir, 0o777)
        r = h.tpkg("verify", pkg, "--trust", tdir)
        h.check("a world-writable trust directory is refused (exit 2, says why)",
                r.returncode == 2 and "writable" in r.stderr, f"exit {r.returncode}: {tail(r.stderr)}")
        os.chmod(tdir, 0o755)
        write(os.path.join(tdir, "junk.pub"), b"not a key\n")
        os.chmod(os.path.join(tdir, "junk.pub"), 0o644)
        r = h.tpkg("verify", pkg, "--trust", tdir)
        h.check("a broken key file in the trust directory is an error naming it",
                r.returncode == 2 and "junk.pub" in r.stderr, f"exit {r.returncode}: {tail(r.stderr)}")
        os.unlink(os.path.join(tdir, "junk.pub"))

        h.section("mount policy")
        unsigned = os.path.join(T, "unsigned.tpkg")
        h.tpkg("pack", src, "-o", unsigned, "--chunk-size", "64K", "-q")
        empty = os.path.join(T, "no-keys.d")
        os.makedirs(empty)
        rc, log = h.mount(unsigned, mnt, "-o", f"trust={empty}", allow_unsigned=False)
        h.check("an unsigned package is refused: exit 7, says it is not signed, nothing mounted",
                rc == 7 and "not signed" in log and not os.path.ismount(mnt), f"exit {rc}: {tail(log)}")
        h.unmount(mnt)
        rc, log = h.mount(unsigned, mnt, "-o", f"trust={empty},allow_unsigned", allow_unsigned=False)
        h.check("-o allow_unsigned mounts it, with a warning", rc == 0 and os.path.ismount(mnt) and "warning" in log,
                f"exit {rc}: {tail(log)}")
        h.unmount(mnt)
        rc, log = h.mount(pkg, mnt, "-o", f"pubkey={k3}.pub", allow_unsigned=False)
        h.check("a package signed only by untrusted keys is refused: exit 7, names the key ids",
                rc == 7 and "untrusted" in log and alice_id[:16] in log and not os.path.ismount(mnt),
                f"exit {rc}: {tail(log)}")
        h.unmount(mnt)
        rc, log = h.mount(pkg, mnt, "-o", f"pubkey={k2}.pub", allow_unsigned=False)
        ok = h.check("-o pubkey=bob.pub mounts the package bob signed", rc == 0 and os.path.ismount(mnt),
                     f"exit {rc}: {tail(log)}")
        if ok:
            with open(os.path.join(mnt, "model.bin"), "rb") as f:
                h.check("its files read back exactly", f.read() == weights)
        h.unmount(mnt)
        rc, log = h.mount(pkg, mnt, "-o", f"trust={tdir}", allow_unsigned=False)
        h.check("-o trust=DIR (alice.pub inside) mounts it", rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}")
        h.unmount(mnt)

        h.section("tampering")
        good = open(pkg, "rb").read()
        io, cc, ic, ss, ms, _r, so, sz = footer_fields(good)
        inodes_at = io + 56 * cc
        manifest_at = inodes_at + 48 * ic + ss

        def refused(label, data, want_rc, words):
            path = os.path.join(T, "tampered.tpkg")
            write(path, bytes(data))
            rc, log = h.mount(path, mnt, "-o", f"pubkey={k1}.pub", allow_unsigned=False)
            mounted = os.path.ismount(mnt)
            h.unmount(mnt)
            h.check(f"{label}: mount refused with exit {want_rc} and a message naming the problem",
                    rc == want_rc and not mounted and any(w in log for w in words), f"exit {rc}: {tail(log)}")
            r = h.tpkg("verify", path, "--pubkey", k1 + ".pub")
            h.check(f"{label}: verify exits {want_rc}", r.returncode == want_rc, f"exit {r.returncode}: {tail(r.stderr)}")

        d = bytearray(good)
        d[manifest_at + 5] ^= 0x01
        refused("a manifest byte flipped", d, 5, ("root digest",))
        m = bytearray(good)
        text = m[manifest_at:manifest_at + ms]
        k = text.find(b'"version"')
        m[manifest_at + k + 12] = ord("9") if m[manifest_at + k + 12] != ord("9") else ord("8")
        refused("the manifest's version edited and the root recomputed", with_new_root(m), 5,
                ("does not verify", "changed after"))
        d = bytearray(good)
        mode = struct.unpack_from("<I", d, inodes_at + 48)[0]
        struct.pack_into("<I", d, inodes_at + 48, mode ^ 0o002)
        refused("an inode's mode changed (world-writable) and the root recomputed", with_new_root(d), 5, ("does not verify",))
        d = bytearray(good)
        d[io + 24] ^= 0xff  # first chunk entry's digest
        refused("a chunk digest replaced and the root recomputed", with_new_root(d), 5, ("does not verify",))
        d = bytearray(good)
        d[16 + 7] ^= 0x80  # compat flag bit 63: a valid change (readers ignore unknown compat bits)
        refused("a header flag changed and the root recomputed", with_new_root(d), 5, ("does not verify",))
        # Stripped: cut the signature block and point the footer at none. The root still matches.
        end = manifest_end(good)
        footer = bytearray(good[-128:])
        footer[48:64] = bytes(16)
        refused("the signatures stripped", good[:end] + bytes(footer), 7, ("not signed",))
        # A genuine signature by alice over a different package, pasted in.
        other = os.path.join(T, "other.tpkg")
        write(os.path.join(T, "src2/x.txt"), b"something else\n")
        h.tpkg("pack", os.path.join(T, "src2"), "-o", other, "--sign", k1 + ".key", "-q")
        o = open(other, "rb").read()
        oend = manifest_end(o)
        foreign = good[:end] + o[oend:oend + 120]
        foot = bytearray(good[-128:])
        struct.pack_into("<QQ", foot, 48, end, 120)
        refused("alice's signature of another package pasted in", foreign + bytes(foot), 5, ("does not verify",))
        d = bytearray(good)
        struct.pack_into("<Q", d, len(d) - 128 + 56, sz + 1)
        refused("a signature block of the wrong size", d, 4, ("signature", "sections"))

        # Chunk data: the mount is allowed (the root is intact); only the damaged range fails.
        d = bytearray(good)
        strings_at = inodes_at + 48 * ic
        model_first = None
        for ino in range(ic):
            e = inodes_at + 48 * ino
            name_off, name_len = struct.unpack_from("<II", good, e + 8)
            if good[strings_at + name_off:strings_at + name_off + name_len] == b"model.bin":
                model_first = struct.unpack_from("<I", good, e + 40)[0]
        stored_at = struct.unpack_from("<Q", good, io + 56 * (model_first + 2))[0]  # model.bin's third chunk
        d[stored_at + 100] ^= 0x40
        path = os.path.join(T, "damaged.tpkg")
        write(path, bytes(d))
        rc, log = h.mount(path, mnt, "-o", f"pubkey={k1}.pub", allow_unsigned=False)
        if h.check("a chunk damaged after signing: the mount is allowed (index and signature are intact)",
                   rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}"):
            bad = good_ranges = 0
            fd = os.open(os.path.join(mnt, "model.bin"), os.O_RDONLY)
            try:
                for c in range(len(weights) // CHUNK + 1):
                    try:
                        got = os.pread(fd, CHUNK, c * CHUNK)
                        good_ranges += got == weights[c * CHUNK:(c + 1) * CHUNK]
                    except OSError as e:
                        bad += e.errno == errno.EIO
            finally:
                os.close(fd)
            h.check("exactly one 64 KiB range of model.bin fails with EIO, the other ranges read correctly",
                    bad == 1 and good_ranges == len(weights) // CHUNK, f"EIO {bad}, good {good_ranges}")
            with open(os.path.join(mnt, "config.json"), "rb") as f:
                h.check("the other files read correctly", f.read() == b'{"hidden": 64}\n')
            # Through mmap: touching a page of the damaged chunk raises SIGBUS; other pages read fine.
            probe = ("import mmap, sys\n"
                     "f = open(sys.argv[1], 'rb'); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\n"
                     "ok = m[0:4096] == open(sys.argv[1], 'rb').read(4096)\n"
                     "sys.stdout.write('first page ok\\n' if ok else 'first page differs\\n'); sys.stdout.flush()\n"
                     "m[int(sys.argv[2])]\n")
            r = h.run([sys.executable, "-c", probe, os.path.join(mnt, "model.bin"), str(2 * CHUNK + 100)])
            h.check("mmap: a healthy page reads back, touching the damaged chunk's page gets SIGBUS",
                    r.returncode == -7 and "first page ok" in r.stdout, f"exit {r.returncode}: {tail(r.stdout)}")
        h.unmount(mnt)
        r = h.tpkg("verify", path, "--pubkey", k1 + ".pub")
        h.check("verify names model.bin as damaged (exit 5)", r.returncode == 5 and "model.bin" in r.stderr,
                f"exit {r.returncode}: {tail(r.stderr)}")


if __name__ == "__main__":
    main()
