#!/usr/bin/env python3
"""Encrypted packages on real mounts: keygen --encryption, pack --encrypt-to for 1 and 3 recipients
and a passphrase, sealed and public names; the mount refuses without a key or with a stranger's
(exit 9) and serves byte-exact files with -o key= or -o passphrase_file=; the CLI (cat, ls, inspect,
verify, extract) with and without --key; rekey adds and removes recipients without touching
signatures; tampered ciphertext, nonce or tag gives EIO for that chunk only, with or without the
attacker recomputing the digests and the root.

Environment: TORSHPKG, MOUNT_TORSHPKG (set by meson).
"""
import errno
import filecmp
import hashlib
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tpkgtest import Harness, tail, walk  # noqa: E402

CHUNK = 64 << 10
SCRYPT = "10"  # tests only: 1 MiB per passphrase attempt


def footer(data: bytes):
    """index_offset, chunk_count, inode_count, strings_size, manifest_size, reserved, sig_off, sig_size."""
    return struct.unpack_from("<8Q", data, len(data) - 128)


def chunk_entry(data: bytes, k: int):
    io = footer(data)[0]
    off, stored, decoded = struct.unpack_from("<QII", data, io + 56 * k)
    return io + 56 * k, off, stored, decoded


def largest_file_chunk(data: bytes, nth: int) -> tuple[int, int]:
    """(chunk index, file size) of the nth chunk of the largest regular file: the inode table is public."""
    io, cc, ic = footer(data)[:3]
    best = (0, 0)
    for i in range(ic):
        at = io + 56 * cc + 48 * i
        mode = struct.unpack_from("<I", data, at)[0]
        size, first = struct.unpack_from("<QI", data, at + 32)
        if mode & 0o170000 == 0o100000 and size > best[1]:
            best = (first, size)
    return best[0] + nth, best[1]


def reroot(data: bytearray) -> None:
    """What an attacker without the key can do to an unsigned package: fix chunk digests and the root."""
    io, cc, ic, ss, ms = footer(data)[:5]
    for k in range(cc):
        at, off, stored, _ = chunk_entry(data, k)
        data[at + 24:at + 56] = hashlib.sha256(bytes(data[off:off + stored])).digest()
    f = len(data) - 128
    end = io + 56 * cc + 48 * ic + ss + ms
    data[f + 64:f + 96] = hashlib.sha256(bytes(data[:64]) + bytes(data[f:f + 48]) + bytes(data[io:end])).digest()


def read_errors(root: str, files: list[str]) -> dict[str, str]:
    """Each file read whole: '' when it read, else the errno name."""
    out = {}
    for rel in files:
        try:
            with open(os.path.join(root, rel), "rb") as f:
                while f.read(1 << 20):
                    pass
            out[rel] = ""
        except OSError as e:
            out[rel] = errno.errorcode.get(e.errno, str(e.errno))
    return out


def main():
    with Harness("encryption", deadline=840) as h:
        T = h.tmp
        model = os.path.join(T, "model")
        h.gen_model(model, "--weights-size", "8M", "--small-files", "30", "--seed", "11")
        files = [p for p in walk(model) if os.path.isfile(os.path.join(model, p)) and not os.path.islink(os.path.join(model, p))]
        keys = os.path.join(T, "keys")
        os.makedirs(keys)
        for k in ("alice", "bob", "carol", "dave"):
            r = h.tpkg("keygen", "--encryption", "-o", os.path.join(keys, k))
            h.check(f"keygen --encryption {k}", r.returncode == 0 and "X25519" in r.stdout, tail(r.stdout + r.stderr))
        key = {k: os.path.join(keys, f"{k}.key") for k in ("alice", "bob", "carol", "dave")}
        pub = {k: os.path.join(keys, f"{k}.pub") for k in ("alice", "bob", "carol", "dave")}
        r = h.tpkg("keygen", "-o", os.path.join(keys, "signer"))
        h.check("keygen signer (Ed25519)", r.returncode == 0, tail(r.stderr))
        passfile = os.path.join(T, "pass.txt")
        with open(passfile, "w") as f:
            f.write("correct horse battery staple\n")

        # -- three recipients and a passphrase, names sealed ---------------------------------------
        h.section("3 recipients + passphrase, names sealed")
        three = os.path.join(T, "three.tpkg")
        r = h.tpkg("pack", model, "-o", three, "-q", "--chunk-size", "64K", "--encrypt-to", pub["alice"],
                   "--encrypt-to", pub["bob"], "--encrypt-to", pub["carol"], "--encrypt-passphrase-file", passfile,
                   "--scrypt-work", SCRYPT)
        h.check("pack --encrypt-to x3 --encrypt-passphrase-file", r.returncode == 0, tail(r.stderr))
        with open(three, "rb") as f:
            blob = f.read()
        h.check("no file name appears in the package bytes",
                not any(os.path.basename(p).encode() in blob for p in files if len(os.path.basename(p)) >= 8))
        h.check("the config's text does not appear in the package bytes",
                b"hidden_size" not in blob and b"model_type" not in blob)

        mnt = os.path.join(T, "mnt")
        rc, err = h.mount(three, mnt)
        h.check("mount without a key: exit 9, not mounted, names the recipients",
                rc == 9 and not os.path.ismount(mnt) and "x25519" in err and "passphrase" in err, f"exit {rc}: {tail(err)}")
        rc, err = h.mount(three, mnt, "-o", f"key={key['dave']}")
        h.check("mount with a stranger's key: exit 9", rc == 9 and not os.path.ismount(mnt), f"exit {rc}: {tail(err)}")
        for who in ("alice", "carol"):
            h.mount(three, mnt, "-o", f"key={key[who]}", check_name=f"mount -o key={who}.key")
            same = all(filecmp.cmp(os.path.join(model, p), os.path.join(mnt, p), shallow=False) for p in files)
            h.check(f"{who}: every file byte-exact ({len(files)} files)", same)
            r = h.run(["cmp", os.path.join(model, files[0]), os.path.join(mnt, files[0])])
            h.check(f"{who}: cmp agrees", r.returncode == 0, tail(r.stdout + r.stderr))
            h.unmount(mnt)
        h.mount(three, mnt, "-o", f"passphrase_file={passfile}", check_name="mount -o passphrase_file=")
        h.check("passphrase: the tree is the same", sorted(walk(mnt)) == sorted(walk(model)))
        h.unmount(mnt)

        # -- the CLI with and without keys -----------------------------------------------------------
        h.section("CLI")
        r = h.tpkg("inspect", three, "--json")
        j = json.loads(r.stdout) if r.returncode == 0 else {}
        enc = j.get("encryption", {})
        h.check("inspect without a key: exit 0, locked, 4 recipients, names sealed, no manifest",
                r.returncode == 0 and enc.get("unlocked") is False and len(enc.get("recipients", [])) == 4
                and enc.get("names_sealed") is True and j.get("manifest") == {}, tail(r.stdout + r.stderr))
        r = h.tpkg("inspect", three)
        h.check("inspect text without a key names no file", r.returncode == 0 and "config.json" not in r.stdout
                and "locked" in r.stdout, tail(r.stdout))
        r = h.tpkg("inspect", three, "--key", key["bob"], "--json")
        j = json.loads(r.stdout) if r.returncode == 0 else {}
        h.check("inspect --key bob.key: unlocked, manifest shown",
                r.returncode == 0 and j.get("encryption", {}).get("unlocked") is True and j.get("manifest", {}).get("files"),
                tail(r.stderr))
        r = h.tpkg("verify", three)
        h.check("verify without a key: OK, sealed bytes checked", r.returncode == 0 and "nothing decrypted" in r.stdout,
                tail(r.stdout + r.stderr))
        r = h.tpkg("verify", three, "--key", key["alice"])
        h.check("verify --key: OK, decrypted and decoded", r.returncode == 0 and "decrypted and decoded" in r.stdout,
                tail(r.stdout + r.stderr))
        for cmd in (["cat", three, "config.json"], ["ls", three], ["extract", three, os.path.join(T, "x0")]):
            r = h.tpkg(*cmd)
            h.check(f"{cmd[0]} without a key: exit 9, one line", r.returncode == 9 and len(r.stderr.strip().splitlines()) == 1,
                    f"exit {r.returncode}: {tail(r.stderr)}")
        r = h.tpkg("cat", three, "config.json", "--key", key["dave"])
        h.check("cat --key dave.key (a stranger): exit 9", r.returncode == 9, tail(r.stderr))
        r = h.tpkg("cat", three, "config.json", "--key", pub["alice"])
        h.check("cat --key alice.pub (a public key): exit 2", r.returncode == 2, tail(r.stderr))
        r = h.tpkg("cat", three, "config.json", "--key", os.path.join(keys, "signer.key"))
        h.check("cat --key signer.key (Ed25519): exit 2, says so", r.returncode == 2 and "X25519" in r.stderr, tail(r.stderr))
        r = h.run([os.environ["TORSHPKG"], "cat", three, "config.json", "--key", key["carol"]], binary=True)
        with open(os.path.join(model, "config.json"), "rb") as f:
            h.check("cat --key carol.key: the bytes", r.returncode == 0 and r.stdout == f.read())
        r = h.tpkg("extract", three, os.path.join(T, "x1"), "--passphrase-file", passfile)
        h.check("extract --passphrase-file: every file", r.returncode == 0 and all(
            filecmp.cmp(os.path.join(model, p), os.path.join(T, "x1", p), shallow=False) for p in files), tail(r.stderr))

        # -- one recipient, public names --------------------------------------------------------------
        h.section("1 recipient, public names")
        one = os.path.join(T, "one.tpkg")
        r = h.tpkg("pack", model, "-o", one, "-q", "--chunk-size", "64K", "--encrypt-to", pub["alice"], "--public-names")
        h.check("pack --encrypt-to alice --public-names", r.returncode == 0, tail(r.stderr))
        r = h.tpkg("ls", one)
        h.check("ls without a key lists public names", r.returncode == 0 and "config.json" in r.stdout, tail(r.stderr))
        r = h.tpkg("cat", one, "config.json")
        h.check("cat without a key: exit 9", r.returncode == 9, tail(r.stderr))
        h.mount(one, mnt, "-o", f"key={key['alice']}", check_name="mount one.tpkg -o key=alice.key")
        h.check("one recipient: byte-exact", all(filecmp.cmp(os.path.join(model, p), os.path.join(mnt, p), shallow=False)
                                                 for p in files))
        h.unmount(mnt)

        # -- rekey, with a signature that must survive ---------------------------------------------------
        h.section("rekey")
        r = h.tpkg("sign", three, "--key", os.path.join(keys, "signer.key"))
        h.check("sign the encrypted package (no key needed)", r.returncode == 0, tail(r.stderr))
        r = h.tpkg("rekey", three, "--key", key["alice"], "--add", pub["dave"], "--remove", pub["bob"])
        h.check("rekey --add dave --remove bob", r.returncode == 0 and "4 recipients" in r.stdout, tail(r.stdout + r.stderr))
        r = h.tpkg("verify", three, "--pubkey", os.path.join(keys, "signer.pub"))
        h.check("the signature still verifies after rekey", r.returncode == 0, tail(r.stdout + r.stderr))
        rc, err = h.mount(three, mnt, "-o", f"key={key['bob']}")
        h.check("bob, removed: exit 9", rc == 9 and not os.path.ismount(mnt), f"exit {rc}: {tail(err)}")
        h.mount(three, mnt, "-o", f"key={key['dave']}", "-o", f"pubkey={os.path.join(keys, 'signer.pub')}",
                allow_unsigned=False, check_name="dave, added: mounts, signature trusted")
        h.check("dave: byte-exact", all(filecmp.cmp(os.path.join(model, p), os.path.join(mnt, p), shallow=False)
                                        for p in files))
        h.unmount(mnt)
        r = h.tpkg("rekey", three, "--key", key["alice"], "--remove-passphrases", "--remove", pub["carol"])
        h.check("rekey --remove-passphrases --remove carol", r.returncode == 0, tail(r.stderr))
        r = h.tpkg("cat", three, "config.json", "--passphrase-file", passfile)
        h.check("the passphrase no longer opens it: exit 9", r.returncode == 9, tail(r.stderr))
        r = h.tpkg("rekey", three, "--key", key["bob"], "--add", pub["bob"])
        h.check("rekey by a removed recipient: exit 9", r.returncode == 9, tail(r.stderr))

        # -- tampering ---------------------------------------------------------------------------------
        h.section("tampered ciphertext, nonce, tag")
        with open(one, "rb") as f:
            base = bytearray(f.read())
        k, size = largest_file_chunk(base, 1)
        _, off, stored, _ = chunk_entry(base, k)
        victim = [p for p in files if os.path.getsize(os.path.join(model, p)) == size]
        h.check("the largest file is found by its public size", len(victim) == 1, victim)
        for where, at in (("nonce", off + 3), ("ciphertext", off + stored // 2), ("tag", off + stored - 5)):
            for fix_digests in (False, True):
                data = bytearray(base)
                data[at] ^= 0x40
                if fix_digests:
                    reroot(data)
                bad = os.path.join(T, f"bad-{where}-{int(fix_digests)}.tpkg")
                with open(bad, "wb") as f:
                    f.write(data)
                label = f"{where} flipped{' and digests recomputed' if fix_digests else ''}"
                rc, err = h.mount(bad, mnt, "-o", f"key={key['alice']}")
                if not h.check(f"{label}: mounts", rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(err)}"):
                    continue
                got = read_errors(mnt, files)
                h.check(f"{label}: EIO for {victim[0]} only, the rest reads",
                        got.get(victim[0]) == "EIO" and all(v == "" for p, v in got.items() if p != victim[0]),
                        {p: v for p, v in got.items() if v})
                h.unmount(mnt)
        r = h.tpkg("verify", os.path.join(T, "bad-tag-1.tpkg"), "--key", key["alice"])
        h.check("verify --key of recomputed digests: exit 5, names the damaged file",
                r.returncode == 5 and victim[0] in r.stderr, tail(r.stdout + r.stderr))
        r = h.tpkg("verify", os.path.join(T, "bad-tag-1.tpkg"))
        h.check("verify without a key cannot see it (the digests match): exit 0", r.returncode == 0, tail(r.stdout))


if __name__ == "__main__":
    main()
