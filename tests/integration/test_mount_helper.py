#!/usr/bin/env python3
"""mount.torshpkg as a program and as a mount(8) helper: returns only once mounted, options
(uid/gid/umask, ignored fstab words, rw refused), errors (bad package, bad mount point), -f,
unmount with fusermount3 and umount, `mount -t torshpkg` and an fstab line (mount -T).

Environment: TORSHPKG, MOUNT_TORSHPKG, GEN_MODEL (set by meson).
"""
import errno
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tpkgtest import MOUNT, Harness, compare_stats, is_mounted, mount_procs, tail  # noqa: E402

HELPER = "/sbin/mount.torshpkg"


def mountinfo(mnt):
    mnt = os.path.realpath(mnt)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[4] == mnt:
                sep = parts.index("-")
                return {"options": parts[5], "fstype": parts[sep + 1], "source": parts[sep + 2],
                        "super": parts[sep + 3]}
    return None


def wait_gone(mnt, seconds=10):
    deadline = time.monotonic() + seconds
    while (is_mounted(mnt) or mount_procs(mnt)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not is_mounted(mnt) and not mount_procs(mnt)


def build_tree(root):
    rnd = random.Random(5)
    os.makedirs(f"{root}/sub/deeper")
    os.makedirs(f"{root}/open-dir")
    for name, mode, data in (("plain.txt", 0o644, b"plain\n"), ("world.txt", 0o666, b"world\n"),
                             ("exec.sh", 0o755, b"#!/bin/sh\n"), ("private.key", 0o600, b"key\n"),
                             ("sub/big.bin", 0o644, rnd.randbytes(3 * (1 << 20) + 17)),
                             ("sub/deeper/x.json", 0o640, b"{}\n")):
        with open(f"{root}/{name}", "wb") as f:
            f.write(data)
        os.chmod(f"{root}/{name}", mode)
    os.chmod(f"{root}/open-dir", 0o777)
    os.symlink("sub/big.bin", f"{root}/link")


def main():
    with Harness("mount_helper", deadline=540) as h:
        src = os.path.join(h.tmp, "src")
        build_tree(src)
        pkg = os.path.join(h.tmp, "pkg.tpkg")
        r = h.tpkg("pack", src, "-o", pkg, "--name", "helper-test", "--version", "2.0.0", "-q")
        if not h.check("pack the test tree", r.returncode == 0, tail(r.stderr)):
            return
        mnt = os.path.join(h.tmp, "mnt")
        os.makedirs(mnt)

        h.section("help and version")
        r = h.run([MOUNT, "-h"])
        h.check("mount.torshpkg -h exits 0 with a usage text", r.returncode == 0 and "usage" in r.stdout.lower(),
                f"exit {r.returncode}: {tail(r.stdout + r.stderr)}")
        r = h.run([MOUNT, "-V"])
        h.check("mount.torshpkg -V exits 0 and prints a version", r.returncode == 0 and r.stdout.strip(),
                f"exit {r.returncode}: {tail(r.stdout + r.stderr)}")
        r = h.run([MOUNT])
        h.check("mount.torshpkg without arguments exits 2 with a message", r.returncode == 2 and r.stderr.strip(),
                f"exit {r.returncode}: {tail(r.stderr)}")

        h.section("returns only when mounted")
        for i in range(3):
            rc, log = h.mount(pkg, mnt)
            now = os.path.ismount(mnt)
            ok = rc == 0 and now
            if ok:
                try:
                    with open(os.path.join(mnt, "plain.txt"), "rb") as f:
                        ok = f.read() == b"plain\n"
                except OSError as e:
                    ok, log = False, str(e)
            h.check(f"run {i + 1}: ismount and a read succeed immediately after mount.torshpkg returns", ok,
                    f"exit {rc}, ismount {now}: {tail(log)}")
            info = mountinfo(mnt)
            if i == 0:
                h.check("mountinfo: type fuse.torshpkg, read-only",
                        info and info["fstype"] == "fuse.torshpkg" and "ro" in info["options"].split(","),
                        f"{info}")
                compare_stats(h, "default options", src, mnt, uid=os.getuid(), gid=os.getgid(), nlink=True)
            h.unmount(mnt)
            h.check(f"run {i + 1}: unmounted and the daemon is gone", wait_gone(mnt), f"{mount_procs(mnt)}")

        # A daemon must not keep the caller's stdout/stderr open: `x=$(mount.torshpkg ...)` would hang.
        t = time.monotonic()
        try:
            p = subprocess.run([MOUNT, pkg, mnt, "-o", "allow_unsigned"], capture_output=True, timeout=30,
                               stdin=subprocess.DEVNULL)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = None
        h.mounts.append(mnt)
        h.check("with stdout/stderr on pipes, mount.torshpkg returns (the daemon closes them)",
                rc == 0 and os.path.ismount(mnt), f"exit {rc} after {time.monotonic() - t:.1f} s")
        h.unmount(mnt)
        wait_gone(mnt)

        h.section("options")
        rc, log = h.mount(pkg, mnt, "-o", "uid=1234,gid=1234,umask=077")
        if h.check("-o uid=1234,gid=1234,umask=077 mounts", rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}"):
            compare_stats(h, "uid=1234,gid=1234,umask=077", src, mnt, uid=1234, gid=1234, umask=0o077)
            with open(os.path.join(mnt, "sub/big.bin"), "rb") as f, open(os.path.join(src, "sub/big.bin"), "rb") as g:
                h.check("content reads back under uid/gid/umask", f.read() == g.read())
        h.unmount(mnt)
        wait_gone(mnt)

        rc, log = h.mount(pkg, mnt, "-o", "umask=0222")
        if h.check("-o umask=0222 mounts", rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}"):
            m = stat.S_IMODE(os.stat(os.path.join(mnt, "world.txt")).st_mode)
            h.check("umask=0222 turns a 0666 file into 0444", m == 0o444, oct(m))
        h.unmount(mnt)
        wait_gone(mnt)

        ignored = "ro,defaults,auto,noauto,user,nouser,users,nofail,_netdev,exec,noexec,suid,nosuid,dev,nodev," \
                  "atime,noatime,relatime"
        rc, log = h.mount(pkg, mnt, "-o", ignored)
        h.check("fstab words (ro,defaults,nofail,_netdev,noatime,...) are accepted",
                rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}")
        h.unmount(mnt)
        wait_gone(mnt)

        rc, log = h.mount(pkg, mnt, "-o", "cache_size=1M,threads=2,allow_other,fsname=myfs")
        if h.check("-o cache_size=1M,threads=2,allow_other,fsname=myfs mounts", rc == 0 and os.path.ismount(mnt),
                   f"exit {rc}: {tail(log)}"):
            info = mountinfo(mnt)
            h.check("fsname= shows as the mount source", info and info["source"] == "myfs", f"{info}")
            r = h.run(["cmp", os.path.join(src, "sub/big.bin"), os.path.join(mnt, "sub/big.bin")])
            h.check("content is right with a 1M cache and 2 threads", r.returncode == 0, tail(r.stdout + r.stderr))
        h.unmount(mnt)
        wait_gone(mnt)

        # The spec says "rw is refused", but mount(8) itself passes "-o rw" to every helper when the user
        # gives no option (util-linux 2.38 does), and the spec also requires `mount -t torshpkg PKG MNT` to
        # work. What must hold either way: rw never yields a writable mount. Refusing (non-zero, a message,
        # nothing mounted) or mounting read-only both pass this check.
        for opt in ("rw", "ro,rw", "rw,uid=3"):
            rc, log = h.mount(pkg, mnt, "-o", opt)
            if rc == 0 and os.path.ismount(mnt):
                info = mountinfo(mnt)
                try:
                    open(os.path.join(mnt, "new-file"), "wb").close()
                    werr = None
                except OSError as e:
                    werr = e.errno
                h.check(f"-o {opt}: mounted read-only anyway (mountinfo ro, create fails with EROFS)",
                        info and "ro" in info["options"].split(",") and werr == errno.EROFS,
                        f"{info}, create errno {werr}")
            else:
                h.check(f"-o {opt}: refused with a message and nothing mounted",
                        rc is not None and 0 < rc < 128 and not os.path.ismount(mnt) and log.strip(),
                        f"exit {rc}: {tail(log)}")
            h.unmount(mnt)
            wait_gone(mnt)

        h.section("refusals")
        bad = os.path.join(h.tmp, "garbage.tpkg")
        with open(bad, "wb") as f:
            f.write(random.Random(1).randbytes(10000))
        cases = [
            ("-o uid=abc is refused with exit 2", [pkg, mnt, "-o", "uid=abc"], 2),
            ("-o umask=999 is refused with exit 2", [pkg, mnt, "-o", "umask=999"], 2),
            ("-o no_such_option is refused with exit 2", [pkg, mnt, "-o", "no_such_option"], 2),
            ("a file that is not a package: exit 4", [bad, mnt], 4),
            ("a missing package: exit 3", [os.path.join(h.tmp, "nope.tpkg"), mnt], 3),
            ("a directory as the package fails", [src, mnt], None),
            ("a missing mount point fails", [pkg, os.path.join(h.tmp, "no-such-dir")], None),
            ("a regular file as the mount point fails", [pkg, os.path.join(src, "plain.txt")], None),
        ]
        for what, args, want in cases:
            try:
                p = subprocess.run([MOUNT, *args, "-o", "allow_unsigned"], capture_output=True, timeout=30,
                                   stdin=subprocess.DEVNULL)
                rc, err = p.returncode, p.stderr.decode("utf-8", "replace")
            except subprocess.TimeoutExpired:
                rc, err = None, "timed out"
            target = args[1]
            mounted = os.path.isdir(target) and os.path.ismount(target)
            if mounted:
                h.mounts.append(target)
                h.unmount(target)
            ok = rc is not None and 0 < rc < 128 and (want is None or rc == want) and not mounted \
                and err.strip() and "mount.torshpkg" in err
            h.check(f"{what} (non-zero, a message, nothing mounted)", ok,
                    f"exit {rc}, mounted {mounted}: {tail(err)}")
            if "missing mount point" in what:
                h.check("the message names the missing mount point", "no-such-dir" in err, tail(err))

        h.section("foreground and signals")
        log = open(os.path.join(h.tmp, "fg.log"), "w+b")
        p = subprocess.Popen([MOUNT, pkg, mnt, "-f", "-o", "allow_unsigned"], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        h.mounts.append(mnt)
        deadline = time.monotonic() + 15
        while not os.path.ismount(mnt) and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        h.check("-f: mounted while the process stays in the foreground", os.path.ismount(mnt) and p.poll() is None,
                f"exit {p.poll()}")
        r = h.run(["fusermount3", "-u", mnt], timeout=30)
        try:
            rc = p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        h.check("-f: fusermount3 -u ends the foreground process with exit 0", r.returncode == 0 and rc == 0,
                f"fusermount3 exit {r.returncode}, mount.torshpkg exit {rc}")
        log.seek(0)
        out = log.read().decode("utf-8", "replace")
        h.check("-f: says where it is mounted and how to end it", f"at {os.path.realpath(mnt)}; Ctrl-C to unmount" in out,
                tail(out))
        log.close()

        # A relative mount point, ended by SIGINT (Ctrl-C) and SIGTERM: the daemon must still find
        # its mount after changing directory, leaving no dead "Transport endpoint" mount, exit 0.
        for sig in (signal.SIGINT, signal.SIGTERM):
            p = subprocess.Popen([MOUNT, pkg, os.path.basename(mnt), "-f", "-o", "allow_unsigned"],
                                 cwd=os.path.dirname(mnt), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
            deadline = time.monotonic() + 15
            while not os.path.ismount(mnt) and time.monotonic() < deadline and p.poll() is None:
                time.sleep(0.05)
            up = os.path.ismount(mnt)
            p.send_signal(sig)
            try:
                rc = p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = p.wait()
            err = p.stderr.read().decode("utf-8", "replace")
            p.stderr.close()
            gone = wait_gone(mnt)
            h.check(f"-f on a relative mount point, {signal.Signals(sig).name}: exit 0, unmounted (no dead mount)",
                    up and rc == 0 and gone, f"mounted {up}, exit {rc}, gone {gone}: {tail(err)}")
            if not gone:
                h.unmount(mnt)
        r = h.run([MOUNT, pkg, os.path.basename(mnt), "-o", "allow_unsigned"], cwd=os.path.dirname(mnt), timeout=30)
        h.mounts.append(mnt)
        pids = mount_procs(os.path.basename(mnt))
        if h.check("a daemon on a relative mount point", r.returncode == 0 and os.path.ismount(mnt) and len(pids) == 1,
                   f"exit {r.returncode}, pids {pids}: {tail(r.stderr)}"):
            os.kill(pids[0], signal.SIGTERM)
            deadline = time.monotonic() + 10
            while (is_mounted(mnt) or mount_procs(os.path.basename(mnt))) and time.monotonic() < deadline:
                time.sleep(0.05)
            h.check("SIGTERM to it unmounts (no dead mount) and ends it",
                    not is_mounted(mnt) and not mount_procs(os.path.basename(mnt)))
        h.unmount(mnt)

        h.section("non-empty mount points and stacked mounts")
        full = os.path.join(h.tmp, "full-dir")
        os.makedirs(full, exist_ok=True)
        with open(os.path.join(full, "precious.txt"), "w") as f:
            f.write("keep me visible\n")
        p = subprocess.run([MOUNT, pkg, full, "-o", "allow_unsigned"], capture_output=True, timeout=30,
                           stdin=subprocess.DEVNULL)
        err = p.stderr.decode("utf-8", "replace")
        if os.path.ismount(full):
            h.mounts.append(full)
            h.unmount(full)
        h.check("a non-empty mount point is refused: exit 2, the message names it and -o nonempty",
                p.returncode == 2 and "not empty" in err and "nonempty" in err and not os.path.ismount(full), tail(err))
        rc, log = h.mount(pkg, full, "-o", "nonempty")
        h.check("-o nonempty mounts over it", rc == 0 and os.path.ismount(full), f"exit {rc}: {tail(log)}")
        h.unmount(full)
        rc, log = h.mount(pkg, mnt)
        if h.check("mount for the stacking check", rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}"):
            p = subprocess.run([MOUNT, pkg, mnt, "-o", "allow_unsigned"], capture_output=True, timeout=30,
                               stdin=subprocess.DEVNULL)
            err = p.stderr.decode("utf-8", "replace")
            h.check("mounting twice on the same directory is refused: exit 2, 'already a mount point', one daemon",
                    p.returncode == 2 and "already a mount point" in err and len(mount_procs(mnt)) == 1, tail(err))
        h.unmount(mnt)
        wait_gone(mnt)

        rc, log = h.mount(pkg, mnt)
        pids = mount_procs(mnt)
        if h.check("mount again for SIGTERM", rc == 0 and os.path.ismount(mnt) and len(pids) == 1,
                   f"exit {rc}, pids {pids}: {tail(log)}"):
            os.kill(pids[0], signal.SIGTERM)
            h.check("SIGTERM to the daemon unmounts and ends it", wait_gone(mnt), f"{mount_procs(mnt)}")
        h.unmount(mnt)

        h.section("umount(8), mount -t torshpkg, fstab")
        rc, log = h.mount(pkg, mnt)
        if rc == 0:
            r = h.run(["umount", mnt], timeout=30)
            h.check("umount MNT unmounts and the daemon exits", r.returncode == 0 and wait_gone(mnt),
                    f"exit {r.returncode}: {tail(r.stderr)}")
        h.unmount(mnt)

        created = False
        if not os.path.lexists(HELPER):
            os.symlink(os.path.abspath(MOUNT), HELPER)
            created = True
            h.cleanups.append(lambda: os.path.islink(HELPER) and os.unlink(HELPER))
            h.note(f"temporary symlink {HELPER} -> {MOUNT}")
        else:
            h.note(f"using the installed {HELPER}")

        def mount8(label, args):
            r = h.run(["mount", *args], timeout=60)
            h.mounts.append(mnt)
            ok = r.returncode == 0 and os.path.ismount(mnt)
            if ok:
                with open(os.path.join(mnt, "sub/deeper/x.json"), "rb") as f:
                    ok = f.read() == b"{}\n"
            h.check(f"{label}: mounted and readable", ok, f"exit {r.returncode}: {tail(r.stderr)}")
            if ok:
                r = h.run(["umount", mnt], timeout=30)
                h.check(f"{label}: umount", r.returncode == 0 and wait_gone(mnt), tail(r.stderr))
            h.unmount(mnt)

        # mount(8) gives no way to pass allow_unsigned in the plain `mount -t torshpkg PKG MNT`: sign the
        # package and trust the key the way an administrator would, through the default trust directory.
        trust_dir = "/etc/torshpkg/trusted.d"
        made = [d for d in ("/etc/torshpkg", trust_dir) if not os.path.isdir(d)]
        os.makedirs(trust_dir, mode=0o755, exist_ok=True)
        for d in made:  # cleanups run last-first: the inner directory goes first
            h.cleanups.append(lambda d=d: os.path.isdir(d) and not os.listdir(d) and os.rmdir(d))
        key = os.path.join(h.tmp, "admin")
        trusted_pub = os.path.join(trust_dir, f"torshpkg-test-{os.getpid()}.pub")
        r = h.tpkg("keygen", "-o", key)
        r2 = h.tpkg("sign", pkg, "--key", key + ".key")
        shutil.copyfile(key + ".pub", trusted_pub)
        h.cleanups.append(lambda: os.path.exists(trusted_pub) and os.unlink(trusted_pub))
        h.note(f"temporary trusted key {trusted_pub}")
        h.check("keygen and sign for the mount(8) checks", r.returncode == 0 and r2.returncode == 0,
                tail(r.stderr + r2.stderr))

        mount8("mount -t torshpkg -o ro PKG MNT", ["-t", "torshpkg", "-o", "ro", pkg, mnt])
        mount8("mount -t torshpkg -o uid=7,umask=027 PKG MNT", ["-t", "torshpkg", "-o", "ro,uid=7,umask=027", pkg, mnt])
        # mount(8) hands the helper "-o rw" when no option is given (util-linux does this): the spec's
        # example `mount -t torshpkg model.tpkg /mnt/x` has to work all the same.
        mount8("mount -t torshpkg PKG MNT (mount(8) passes -o rw)", ["-t", "torshpkg", pkg, mnt])
        fstab = os.path.join(h.tmp, "fstab")
        with open(fstab, "w") as f:
            f.write(f"# test fstab\n{pkg} {mnt} torshpkg ro,allow_other 0 0\n")
        mount8("fstab line `PKG MNT torshpkg ro,allow_other 0 0` (mount -T FSTAB MNT)", ["-T", fstab, mnt])
        if created and os.path.islink(HELPER):
            os.unlink(HELPER)


if __name__ == "__main__":
    main()
