"""Shared helpers for the torshpkg integration tests (stdlib only).

Each test script does:

    with Harness("roundtrip") as h:
        ...
        h.check("name", condition, "detail shown on failure")

Harness prints PASS/FAIL per check, a closing "N passed, N failed" line, unmounts everything it
mounted and removes its temporary directory even when the script fails or is killed (SIGTERM from
meson's timeout), and exits non-zero when any check failed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback

TIMEOUT = 120  # default seconds for one tool invocation


def tool(var: str, fallback: str) -> str:
    v = os.environ.get(var)
    if v:
        return v
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.normpath(os.path.join(here, "..", ".."))
    return os.path.join(root, fallback)


TORSHPKG = tool("TORSHPKG", "build/src/cli/torshpkg")
MOUNT = tool("MOUNT_TORSHPKG", "build/src/fuse/mount.torshpkg")
GEN_MODEL = tool("GEN_MODEL", "scripts/gen-model.py")


class Terminated(BaseException):
    pass


def _on_term(signum, frame):
    raise Terminated(f"signal {signum}")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def write(path, data, mode=None):
    """Writes bytes to path, making its directories; chmod to `mode` if given."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)


def tail(text, n: int = 600) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = (text or "").strip()
    return text if len(text) <= n else "..." + text[-n:]


def _mountinfo_entry(path: str):
    path = os.path.realpath(path)
    found = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4])
                if mp == path:
                    found = parts  # the last one is the top of the stack
    except OSError:
        pass
    return found


def is_mounted(path: str) -> bool:
    """From /proc/self/mountinfo: never touches the (possibly hung) mount itself."""
    return _mountinfo_entry(path) is not None


def abort_fuse_connection(path: str) -> bool:
    """Aborts the FUSE connection of the mount at path (through fusectl), so that every request
    waiting on a hung or dead daemon fails at once with ENOTCONN instead of blocking forever."""
    entry = _mountinfo_entry(path)
    if not entry:
        return False
    minor = entry[2].split(":")[1]
    conn = "/sys/fs/fuse/connections"
    if os.path.isdir(conn) and not os.listdir(conn):
        subprocess.run(["mount", "-t", "fusectl", "fusectl", conn], capture_output=True, timeout=30)
    try:
        with open(f"{conn}/{minor}/abort", "w") as f:
            f.write("1")
        return True
    except OSError:
        return False


def mount_procs(mnt: str) -> list[int]:
    """pids of mount.torshpkg processes whose command line names mnt"""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if args and os.path.basename(args[0]).startswith(b"mount.torshpkg") and mnt.encode() in args:
            out.append(int(d))
    return out


class Harness:
    def __init__(self, name: str, deadline: float = 540):
        """deadline: seconds after which a watchdog declares the test hung, aborts the FUSE
        connections of its mounts (so blocked readers wake up) and, if that does not end the
        test, cleans up and exits. Keep it below the meson timeout."""
        self.name = name
        self.deadline = float(os.environ.get("TORSHPKG_TEST_DEADLINE", deadline))
        self.done = threading.Event()
        self.passed = 0
        self.failed = 0
        self.failures: list[str] = []
        self.mounts: list[str] = []
        self.cleanups = []
        self.reaped_clean = True
        base = os.environ.get("TORSHPKG_TEST_TMPDIR") or "/var/tmp"
        if not os.path.isdir(base):
            base = None
        self.tmp = tempfile.mkdtemp(prefix=f"torshpkg-it-{name}-", dir=base)
        # The daemon serves as nobody once mounted (its sandbox): disk caches under here must stay
        # reachable for it, as /var/cache/torshpkg is.
        os.chmod(self.tmp, 0o755)

    # -- reporting -----------------------------------------------------------------------------
    def check(self, what: str, ok, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"PASS {what}", flush=True)
        else:
            self.failed += 1
            self.failures.append(what)
            print(f"FAIL {what}" + (f": {detail}" if detail else ""), flush=True)
        return bool(ok)

    def note(self, text: str) -> None:
        print(f"     {text}", flush=True)

    def section(self, text: str) -> None:
        print(f"== {text}", flush=True)

    # -- processes ------------------------------------------------------------------------------
    def run(self, args, timeout: float = TIMEOUT, input: bytes | None = None, env=None, binary=False, cwd=None):
        """Runs a command; returns CompletedProcess, or one with returncode None on time-out."""
        args = [str(a) for a in args]
        e = None
        if env:
            e = dict(os.environ)
            e.update(env)
        p = subprocess.Popen(args, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, cwd=cwd)
        try:
            out, err = p.communicate(input, timeout=timeout)
            r = subprocess.CompletedProcess(args, p.returncode, out, err)
        except subprocess.TimeoutExpired:
            p.kill()
            try:
                out, err = p.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                # stuck in the kernel on a hung mount: wake it up by aborting our FUSE connections
                self.abort_mounts(f"{os.path.basename(args[0])} did not die after a time-out")
                out, err = p.communicate()
            r = subprocess.CompletedProcess(args, None, out or b"", (err or b"") + b"\n[timed out]")
        if not binary:
            r.stdout = r.stdout.decode("utf-8", "replace")
            r.stderr = r.stderr.decode("utf-8", "replace")
        return r

    def tpkg(self, *args, **kw):
        return self.run([TORSHPKG, *args], **kw)

    def gen_model(self, outdir: str, *args, timeout: float = 300) -> None:
        t = time.monotonic()
        r = self.run([sys.executable, GEN_MODEL, outdir, *args], timeout=timeout)
        ok = self.check(f"gen-model.py {' '.join(args)}", r.returncode == 0, tail(r.stderr))
        if not ok:
            raise RuntimeError("cannot generate the test model")
        self.note(f"{tail(r.stdout)} ({time.monotonic() - t:.1f} s)")

    # -- mounts -------------------------------------------------------------------------------
    def mount(self, pkg: str, mnt: str, *opts: str, timeout: float = 60, check_name: str | None = None,
              allow_unsigned: bool = True):
        """Runs mount.torshpkg; returns (returncode, stderr). Registers the mount for cleanup.
        Test packages are unsigned unless a test signs them: `allow_unsigned` adds -o allow_unsigned."""
        if allow_unsigned:
            opts = (*opts, "-o", "allow_unsigned")
        os.makedirs(mnt, exist_ok=True)
        out = os.path.join(self.tmp, f"mount-{len(self.mounts)}.log")
        self.mounts.append(mnt)
        with open(out, "w+b") as log:
            try:
                p = subprocess.Popen([MOUNT, pkg, mnt, *opts], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
                rc = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                rc = None
            log.seek(0)
            text = log.read().decode("utf-8", "replace")
        if check_name:
            self.check(check_name, rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(text)}")
        return rc, text

    def abort_mounts(self, why: str) -> None:
        for mnt in set(self.mounts):
            if is_mounted(mnt) and abort_fuse_connection(mnt):
                print(f"     {why}: aborted the FUSE connection of {mnt}", flush=True)

    def unmount(self, mnt: str, tool_args=("fusermount3", "-u")) -> bool:
        """Unmounts cleanly if possible (retrying while busy), else aborts the connection and
        unmounts lazily; then makes sure no mount.torshpkg process for mnt is left behind."""
        ok = True
        if is_mounted(mnt):
            ok = False
            last = ""
            for _ in range(20):
                r = self.run([*tool_args, mnt], timeout=30)
                if r.returncode == 0 and not is_mounted(mnt):
                    ok = True
                    break
                last = tail(r.stderr)
                time.sleep(0.25)
            if not ok:
                self.note(f"clean unmount of {mnt} failed ({last}); aborting the connection, lazy unmount")
                abort_fuse_connection(mnt)
                self.run(["fusermount3", "-uz", mnt], timeout=30)
                if is_mounted(mnt):
                    self.run(["umount", "-l", mnt], timeout=30)
        self.reaped_clean = self.reap(mnt)
        return ok

    def reap(self, mnt: str, grace: float = 10) -> bool:
        """Waits for the daemons serving mnt (started by this test) to exit; kills stragglers."""
        deadline = time.monotonic() + grace
        while mount_procs(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = mount_procs(mnt)
        for pid in left:
            self.note(f"mount.torshpkg pid {pid} for {mnt} still running after unmount: killing it")
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return not left

    def _watchdog(self) -> None:
        if self.done.wait(self.deadline):
            return
        self.failed += 1
        self.failures.append(f"watchdog: still running after {self.deadline:.0f} s")
        print(f"FAIL watchdog: the test is still running after {self.deadline:.0f} s (hung?)", flush=True)
        self.abort_mounts("watchdog")
        if self.done.wait(60):
            return
        print("FAIL watchdog: the test did not end after its mounts were aborted; exiting", flush=True)
        self._finish()

    # -- context --------------------------------------------------------------------------------
    def __enter__(self):
        signal.signal(signal.SIGTERM, _on_term)
        signal.signal(signal.SIGHUP, _on_term)
        print(f"# {self.name}: torshpkg={TORSHPKG} mount={MOUNT} tmp={self.tmp}", flush=True)
        threading.Thread(target=self._watchdog, daemon=True).start()
        return self

    def __exit__(self, et, ev, tb):
        if et is not None:
            self.failed += 1
            self.failures.append(f"aborted: {et.__name__}: {ev}")
            print(f"FAIL test aborted: {et.__name__}: {ev}", flush=True)
            traceback.print_exception(et, ev, tb)
        self._finish()

    def _finish(self):
        self.done.set()
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                print(f"     cleanup: {e}", flush=True)
        for mnt in reversed(list(dict.fromkeys(self.mounts))):
            try:
                self.unmount(mnt)
            except Exception as e:  # noqa: BLE001
                print(f"     unmount {mnt}: {e}", flush=True)
        if not any(is_mounted(m) for m in self.mounts):
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            print(f"     {self.tmp} kept: something is still mounted in it", flush=True)
        print(f"# {self.name}: {self.passed} passed, {self.failed} failed", flush=True)
        if self.failures:
            print("# failed checks:\n" + "\n".join(f"#   {f}" for f in self.failures), flush=True)
        print(f"{self.passed} passed, {self.failed} failed", flush=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1 if self.failed else 0)


# -- tree comparison -----------------------------------------------------------------------------

def walk(root: str) -> list[str]:
    """Relative paths of every entry under root (not following symlinks), root itself as ''."""
    out = [""]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel
        for n in sorted(dirnames) + sorted(filenames):
            out.append(os.path.join(rel, n) if rel else n)
    return out


def compare_stats(h: Harness, label: str, src: str, dst: str, uid=None, gid=None, nlink=False,
                  umask: int = 0, max_report: int = 10) -> None:
    """lstat every entry on both sides: type, permission bits, size, mtime (ns), link targets."""
    src_entries = walk(src)
    dst_entries = walk(dst)
    h.check(f"{label}: same entries ({len(src_entries)})", src_entries == dst_entries,
            f"only in source: {sorted(set(src_entries) - set(dst_entries))[:5]}, "
            f"only in copy: {sorted(set(dst_entries) - set(src_entries))[:5]}")
    problems = []
    for rel in src_entries:
        a = os.lstat(os.path.join(src, rel)) if rel else os.lstat(src)
        try:
            b = os.lstat(os.path.join(dst, rel)) if rel else os.lstat(dst)
        except OSError as e:
            problems.append(f"{rel!r}: {e}")
            continue
        if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode):
            problems.append(f"{rel!r}: type {stat.S_IFMT(a.st_mode):o} != {stat.S_IFMT(b.st_mode):o}")
            continue
        want_mode = stat.S_IMODE(a.st_mode) & 0o777 & ~umask
        # whether umask= applies to symlinks is not specified: accept either for them
        if stat.S_IMODE(b.st_mode) != want_mode and not (
                stat.S_ISLNK(a.st_mode) and stat.S_IMODE(b.st_mode) == stat.S_IMODE(a.st_mode)):
            problems.append(f"{rel!r}: mode {stat.S_IMODE(b.st_mode):o} != {want_mode:o}")
        if not stat.S_ISDIR(a.st_mode) and a.st_size != b.st_size:
            problems.append(f"{rel!r}: size {b.st_size} != {a.st_size}")
        if a.st_mtime_ns != b.st_mtime_ns:
            problems.append(f"{rel!r}: mtime {b.st_mtime_ns} != {a.st_mtime_ns}")
        if stat.S_ISLNK(a.st_mode) and os.readlink(os.path.join(src, rel)) != os.readlink(os.path.join(dst, rel)):
            problems.append(f"{rel!r}: readlink {os.readlink(os.path.join(dst, rel))!r}")
        if uid is not None and b.st_uid != uid:
            problems.append(f"{rel!r}: uid {b.st_uid} != {uid}")
        if gid is not None and b.st_gid != gid:
            problems.append(f"{rel!r}: gid {b.st_gid} != {gid}")
        if nlink and stat.S_ISDIR(a.st_mode):
            p = os.path.join(src, rel) if rel else src
            subdirs = sum(1 for e in os.scandir(p) if e.is_dir(follow_symlinks=False))
            if b.st_nlink != 2 + subdirs:
                problems.append(f"{rel!r}: st_nlink {b.st_nlink} != 2 + {subdirs} subdirectories")
    h.check(f"{label}: lstat type/mode/size/mtime_ns{'/uid/gid' if uid is not None else ''}"
            f"{'/nlink' if nlink else ''}/readlink of every entry", not problems,
            f"{len(problems)} differences, e.g. " + "; ".join(problems[:max_report]))


def inspect_json(h: Harness, pkg: str) -> dict | None:
    r = h.tpkg("inspect", "--json", pkg)
    if r.returncode != 0:
        h.check(f"inspect --json {os.path.basename(pkg)}", False, f"exit {r.returncode}: {tail(r.stderr)}")
        return None
    try:
        return json.loads(r.stdout)
    except ValueError as e:
        h.check(f"inspect --json {os.path.basename(pkg)} parses", False, str(e))
        return None
