#!/usr/bin/env python3
"""meson test hostile-corpus: pack the base package from gen-corpus.py's small tree with the CLI,
write the hostile corpus next to it in the build directory, and check every case with
torshpkg-corpus-check (per-case budgets: 10 s wall clock, 512 MiB resident). Needs neither FUSE
nor root, so it runs in the sanitized build too. The corpus (about 600 MB, mostly a few cases at
the size limits) is removed after a passing run; set TORSHPKG_KEEP_CORPUS=1 to keep it.

Environment (set by meson): TORSHPKG, CORPUS_CHECK, GEN_CORPUS, CORPUS_DIR.
"""
import os
import shutil
import subprocess
import sys


def main():
    torshpkg, check, gen, work = (os.environ[k] for k in ("TORSHPKG", "CORPUS_CHECK", "GEN_CORPUS", "CORPUS_DIR"))
    shutil.rmtree(work, ignore_errors=True)
    tree, base, corpus = (os.path.join(work, d) for d in ("tree", "base.tpkg", "corpus"))
    os.makedirs(work)
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    subprocess.run([sys.executable, gen, "--make-tree", tree], check=True)
    subprocess.run([torshpkg, "pack", tree, "-o", base, "--chunk-size", "64K", "--threads", "1", "-q"],
                   check=True, env=env, stdin=subprocess.DEVNULL)
    # The same tree encrypted for the fuzzing identity (kFuzzRecipientPem in tests/fuzz/exercise.hpp,
    # with which the checker opens encrypted cases).
    fuzz_pub, enc = os.path.join(work, "fuzz.pub"), os.path.join(work, "encrypted.tpkg")
    with open(fuzz_pub, "w") as f:
        f.write("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VuAyEACC2tJKUYuVH8LKcX4HcM7lHM3nlSZKL/W3IrbKr5NyY=\n"
                "-----END PUBLIC KEY-----\n")
    subprocess.run([torshpkg, "pack", tree, "-o", enc, "--chunk-size", "64K", "--threads", "1", "-q",
                    "--encrypt-to", fuzz_pub], check=True, env=env, stdin=subprocess.DEVNULL)
    subprocess.run([sys.executable, gen, corpus, base, enc], check=True)
    # ASan keeps up to 256 MiB of freed blocks resident (its quarantine); a smaller one keeps the
    # memory budget about the library. Leak checks and abort-on-error stay as the caller set them.
    asan = os.environ.get("ASAN_OPTIONS", "")
    check_env = dict(os.environ, ASAN_OPTIONS=(asan + ":" if asan else "") + "quarantine_size_mb=64")
    # meson sets MALLOC_PERTURB_, which makes glibc fill every allocation and so turns memory that is
    # reserved but never touched (buffers sized for the worst case) into resident memory.
    check_env.pop("MALLOC_PERTURB_", None)
    rc = subprocess.run([check, corpus, "--time-budget", "10", "--rss-budget", "512"], env=check_env).returncode
    if rc == 0 and os.environ.get("TORSHPKG_KEEP_CORPUS") != "1":
        shutil.rmtree(work, ignore_errors=True)
    elif rc != 0:
        print(f"corpus kept in {corpus}; rerun one case: {check} {corpus} --only NAME --verbose")
    return rc


if __name__ == "__main__":
    sys.exit(main())
