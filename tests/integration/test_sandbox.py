#!/usr/bin/env python3
"""The sandboxed daemon and the audit log, on real mounts: started as root, mount.torshpkg serves as
nobody (or -o run_as=) with no_new_privs and a seccomp filter; files read byte-exact; unmount with
fusermount3 -u, umount and SIGTERM all work; a forbidden system call kills the daemon (SIGSYS) and
its mount goes away; nosuid,nodev always and -o noexec on request; -o nosandbox opts out. The audit
log: one LOG_AUTH line per mount (package, root, signers, recipient), refusal and integrity failure,
read from a datagram socket this test binds at /dev/log.

Environment: TORSHPKG, MOUNT_TORSHPKG (set by meson).
"""
import filecmp
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tpkgtest import MOUNT, Harness, is_mounted, mount_procs, tail, walk  # noqa: E402


def status_fields(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def mount_options(mnt: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[4] == mnt:
                return parts[5].split(",")
    return []


def wait_gone(mnt: str, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while (is_mounted(mnt) or mount_procs(mnt)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not is_mounted(mnt) and not mount_procs(mnt)


class SyslogSink:
    """A datagram socket at /dev/log, as syslogd would have, collecting the lines sent to it."""

    def __init__(self, h: Harness):
        self.path, self.sock, self.lines = "/dev/log", None, []
        if os.path.exists(self.path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                probe.connect(self.path)
                h.note("/dev/log exists (a syslog daemon runs): the audit lines go there, not to this test")
                return
            except OSError:  # a socket nobody listens on (left by an earlier, killed run): take it over
                os.unlink(self.path)
            finally:
                probe.close()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)  # the sandboxed daemon (nobody) writes here too
        self.sock.settimeout(0.2)
        self.lock = threading.Lock()
        # Read all the time, as syslogd does: a datagram socket queues only 10 messages
        # (net.unix.max_dgram_qlen), and a daemon whose syslog() blocks serves nothing.
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        h.cleanups.append(self.close)

    def _read(self):
        while self.sock:
            try:
                line = self.sock.recv(65536).decode("utf-8", "replace")
            except (socket.timeout, OSError):
                continue
            with self.lock:
                self.lines.append(line)

    def drain(self) -> list[str]:
        with self.lock:
            return list(self.lines)

    def wait_for(self, words, seconds: float = 5) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for line in self.drain():
                if all(w in line for w in words):
                    return line
            time.sleep(0.05)
        return ""

    def close(self):
        if self.sock:
            sock, self.sock = self.sock, None
            self.reader.join(timeout=2)
            sock.close()
            os.unlink(self.path)


def main():
    with Harness("sandbox", deadline=540) as h:
        T = h.tmp
        os.chmod(T, 0o755)  # the sandboxed daemon no longer reads as root
        model = os.path.join(T, "model")
        h.gen_model(model, "--weights-size", "4M", "--small-files", "20", "--seed", "5")
        with open(os.path.join(model, "run.sh"), "w") as f:
            f.write("#!/bin/sh\necho ran\n")
        os.chmod(os.path.join(model, "run.sh"), 0o755)
        files = [p for p in walk(model) if os.path.isfile(os.path.join(model, p))]
        keys = os.path.join(T, "keys")
        os.makedirs(keys)
        for args in (["-o", f"{keys}/signer"], ["--encryption", "-o", f"{keys}/reader"]):
            r = h.tpkg("keygen", *args)
            h.check(f"keygen {' '.join(args)}", r.returncode == 0, tail(r.stderr))
        pkg = os.path.join(T, "m.tpkg")
        r = h.tpkg("pack", model, "-o", pkg, "-q", "--sign", f"{keys}/signer.key", "--encrypt-to", f"{keys}/reader.pub")
        h.check("pack --sign --encrypt-to", r.returncode == 0, tail(r.stderr))
        root = ""
        r = h.tpkg("inspect", pkg, "--json")
        if r.returncode == 0:
            import json
            root = json.loads(r.stdout)["root_sha256"]
        sink = SyslogSink(h)
        mnt = os.path.join(T, "mnt")
        opts = ("-o", f"pubkey={keys}/signer.pub,key={keys}/reader.key")

        h.section("default: nobody, no_new_privs, seccomp")
        h.mount(pkg, mnt, *opts, allow_unsigned=False, check_name="mount as root, signed and encrypted")
        pids = mount_procs(mnt)
        st = status_fields(pids[0]) if pids else {}
        h.check("the daemon runs as nobody (uid 65534)", st.get("Uid", "").split()[:1] == ["65534"], st.get("Uid"))
        h.check("no_new_privs is set and a seccomp filter is on",
                st.get("NoNewPrivs") == "1" and st.get("Seccomp") == "2", (st.get("NoNewPrivs"), st.get("Seccomp")))
        mo = mount_options(mnt)
        h.check("mounted nosuid,nodev,ro", {"nosuid", "nodev", "ro"} <= set(mo), mo)
        h.check(f"every file byte-exact ({len(files)})",
                all(filecmp.cmp(os.path.join(model, p), os.path.join(mnt, p), shallow=False) for p in files))
        if sink.sock:
            line = sink.wait_for(["audit: mount", root[:16] or "root="])
            h.check("audit: one mount line with package, root, signer, recipient, run_as",
                    line and f"package={pkg}" in line and f"root={root}" in line and "signers=" in line
                    and "encrypted=x25519" in line and "run_as=nobody" in line, line or sink.lines[-3:])
            h.check("audit: facility auth (priority <37>, auth.notice)", line.startswith("<37>"), line[:40])
        r = h.run(["fusermount3", "-u", mnt])
        h.check("fusermount3 -u unmounts; the daemon exits", r.returncode == 0 and wait_gone(mnt), tail(r.stderr))

        h.mount(pkg, mnt, *opts, allow_unsigned=False, check_name="mount again")
        r = h.run(["umount", mnt])
        h.check("umount unmounts; the daemon exits", r.returncode == 0 and wait_gone(mnt), tail(r.stderr))

        h.mount(pkg, mnt, *opts, allow_unsigned=False, check_name="mount again")
        for pid in mount_procs(mnt):
            os.kill(pid, signal.SIGTERM)
        h.check("SIGTERM: the mount goes away with the daemon (auto_unmount)", wait_gone(mnt))

        h.section("a forbidden system call kills the daemon")
        os.makedirs(mnt, exist_ok=True)
        env = dict(os.environ, TORSHPKG_SANDBOX_SELFTEST="1")
        p = subprocess.Popen([MOUNT, pkg, mnt, "-f", *opts], env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        h.mounts.append(mnt)
        try:
            rc = p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        err = p.stderr.read().decode("utf-8", "replace")
        h.check("the daemon dies of SIGSYS after its forbidden call", rc == -signal.SIGSYS, f"rc {rc}: {tail(err)}")
        h.check("and its mount is gone (no dead 'Transport endpoint' mount)", wait_gone(mnt), mount_options(mnt))

        h.section("run_as, nosandbox, noexec")
        h.mount(pkg, mnt, *opts, "-o", "run_as=daemon", allow_unsigned=False, check_name="-o run_as=daemon")
        pids = mount_procs(mnt)
        h.check("the daemon runs as daemon (uid 1)", pids and status_fields(pids[0])["Uid"].split()[0] == "1")
        h.unmount(mnt)
        rc, err = h.mount(pkg, mnt, *opts, "-o", "run_as=no-such-user-here", allow_unsigned=False)
        h.check("-o run_as=no-such-user-here: exit 2, nothing mounted", rc == 2 and not is_mounted(mnt), tail(err))
        h.mount(pkg, mnt, *opts, "-o", "nosandbox", allow_unsigned=False, check_name="-o nosandbox")
        pids = mount_procs(mnt)
        st = status_fields(pids[0]) if pids else {}
        h.check("nosandbox: root, no filter", st.get("Uid", "").split()[:1] == ["0"] and st.get("Seccomp") == "0",
                (st.get("Uid"), st.get("Seccomp")))
        h.unmount(mnt)
        h.mount(pkg, mnt, *opts, allow_unsigned=False, check_name="mount without noexec")
        r = h.run([os.path.join(mnt, "run.sh")])
        h.check("without noexec a packed script runs", r.returncode == 0 and "ran" in r.stdout, tail(r.stderr))
        h.unmount(mnt)
        h.mount(pkg, mnt, *opts, "-o", "noexec", allow_unsigned=False, check_name="-o noexec")
        h.check("noexec is a mount flag", "noexec" in mount_options(mnt), mount_options(mnt))
        try:
            subprocess.run([os.path.join(mnt, "run.sh")], capture_output=True, timeout=10)
            ran = True
        except PermissionError:
            ran = False
        h.check("with noexec the script cannot be executed (EACCES)", not ran)
        h.unmount(mnt)

        h.section("audit: refusals and integrity failures")
        rc, err = h.mount(pkg, mnt, "-o", f"pubkey={keys}/signer.pub", allow_unsigned=False)
        h.check("no key: refused (exit 9)", rc == 9, tail(err))
        if sink.sock:
            line = sink.wait_for(["audit: refused", "no_key_given"])
            h.check("audit: the refusal, with its reason", line and f"package={pkg}" in line, line or sink.lines[-3:])
        # A chunk damaged in place (its digest fails): EIO for that file and one audit line.
        with open(pkg, "rb") as f:
            data = bytearray(f.read())
        import struct
        io_, cc = struct.unpack_from("<2Q", data, len(data) - 128)
        off, stored = struct.unpack_from("<QI", data, io_)
        data[off + stored // 2] ^= 1
        bad = os.path.join(T, "bad.tpkg")
        with open(bad, "wb") as f:
            f.write(data)
        h.mount(bad, mnt, *opts, allow_unsigned=False, check_name="mount the damaged copy (the index is intact)")
        failed = []
        for p in files:
            try:
                with open(os.path.join(mnt, p), "rb") as f:
                    f.read()
            except OSError:
                failed.append(p)
        h.check("exactly one file fails to read", len(failed) == 1, failed)
        if sink.sock:
            line = sink.wait_for(["audit: integrity", f"package={bad}"])
            h.check("audit: the integrity failure, naming the chunk", line and "chunk_0" in line, line or sink.lines[-3:])
        h.unmount(mnt)
        if not sink.sock:
            h.note("audit lines not checked: /dev/log belongs to a syslog daemon here")


if __name__ == "__main__":
    main()
