"""Servers for the remote-package tests (stdlib only, plus the openssl CLI and nginx).

    ca = make_ca(h.tmp, "ca")                       # test CA: ca.pem, ca.key
    cert = make_server_cert(h.tmp, ca, "server")    # for 127.0.0.1 and localhost, signed by ca
    ngx = Nginx(h, root, cert)                      # HTTPS (+http2) and plain HTTP on free ports
    fs = FaultProcess(h, root, mode="reset", fraction=0.5)   # httpfault.py in a subprocess
    fs.control(mode="status", code=503, count=2); fs.stats()

Everything listens on 127.0.0.1 only, on ports picked free, and is stopped by the Harness
cleanup (h.cleanups), also when the test fails. Every wait is bounded.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
HTTPFAULT = os.path.join(HERE, "httpfault.py")
NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
OPENSSL = os.environ.get("OPENSSL", "openssl")


def free_port() -> int:
    """A port nobody listens on right now (bound to port 0 on 127.0.0.1, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_accepting(port: int, timeout: float = 15, alive=lambda: True) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the process that started it dies (Linux prctl)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def read_port_line(proc: subprocess.Popen, timeout: float = 15) -> int | None:
    """The port a child prints as its first line on stdout (a pipe), or None when it exits or says
    something else first; waits at most `timeout` seconds."""
    line = b""
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline and not line.endswith(b"\n"):
        if proc.poll() is not None:
            break
        try:
            chunk = proc.stdout.read(64)
        except BlockingIOError:
            chunk = None
        if chunk:
            line += chunk
        else:
            time.sleep(0.05)
    return int(line.strip()) if line.strip().isdigit() else None


def settled(entries) -> list:
    """entries() once its length has stopped growing: servers log a request when it ends, and a
    daemon may still have some in flight. Waits at most 2 s."""
    prev, stable = -1, 0
    deadline = time.monotonic() + 2
    got = entries()
    while time.monotonic() < deadline:
        n = len(got)
        stable = stable + 1 if n == prev else 0
        if stable >= 2:
            break
        prev = n
        time.sleep(0.1)
        got = entries()
    return got


def run_mount(h, mount_exe: str, loc: str, mnt: str, opts, env: dict, timeout: float = 90):
    """mount.torshpkg LOC MNT OPTS... with exactly `env`, registered for unmounting; returns (exit
    code or None on timeout, everything it printed, as bytes)."""
    os.makedirs(mnt, exist_ok=True)
    h.mounts.append(mnt)
    logp = os.path.join(h.tmp, f"mount-{len(h.mounts)}.log")
    with open(logp, "w+b") as log:
        p = subprocess.Popen([mount_exe, loc, mnt, *opts], stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = None
        log.seek(0)
        return rc, log.read()


def _openssl(args, cwd=None):
    r = subprocess.run([OPENSSL, *args], capture_output=True, text=True, timeout=60, cwd=cwd)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {r.stderr.strip()[-400:]}")
    return r


# -- certificates -----------------------------------------------------------------------------

def make_ca(dirpath: str, name: str = "ca", cn: str = "torshpkg test CA") -> dict:
    """A self-signed EC P-256 CA: {"cert": NAME.pem, "key": NAME.key}."""
    os.makedirs(dirpath, exist_ok=True)
    key = os.path.join(dirpath, f"{name}.key")
    cert = os.path.join(dirpath, f"{name}.pem")
    _openssl(["req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
              "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", f"/CN={cn}",
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    return {"cert": cert, "key": key}


def make_server_cert(dirpath: str, ca: dict, name: str = "server",
                     san: str = "IP:127.0.0.1,DNS:localhost") -> dict:
    """A server certificate for 127.0.0.1 and localhost signed by ca: {"cert", "key", "chain"}."""
    key = os.path.join(dirpath, f"{name}.key")
    csr = os.path.join(dirpath, f"{name}.csr")
    cert = os.path.join(dirpath, f"{name}.pem")
    ext = os.path.join(dirpath, f"{name}.ext")
    with open(ext, "w") as f:
        f.write(f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    _openssl(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
              "-keyout", key, "-out", csr, "-subj", "/CN=localhost"])
    _openssl(["x509", "-req", "-in", csr, "-CA", ca["cert"], "-CAkey", ca["key"], "-CAcreateserial",
              "-out", cert, "-days", "30", "-extfile", ext])
    chain = os.path.join(dirpath, f"{name}-chain.pem")
    with open(chain, "w") as out:
        out.write(open(cert).read())
        out.write(open(ca["cert"]).read())
    return {"cert": cert, "key": key, "chain": chain}


# -- nginx ------------------------------------------------------------------------------------

LOG_FORMAT = ('$msec $request_method $uri $status $body_bytes_sent "$http_range" $server_port '
              '$server_protocol $connection $connection_requests')
LOG_RE = re.compile(r'^(\S+) (\S+) (\S+) (\d+) (\d+) "([^"]*)" (\d+) (\S+) (\d+) (\d+)$')


class Nginx:
    """nginx as a non-daemon child of the test: HTTPS (http2 when built in) on self.https_port,
    plain HTTP on self.http_port, both serving root; access log in self.dir/access.log.
    `extra` is inserted into both server blocks (e.g. `location = /x { return 403; }`)."""

    def __init__(self, h, root: str, cert: dict, extra: str = "", name: str = "nginx"):
        self.h = h
        self.root = os.path.realpath(root)
        self.dir = os.path.join(h.tmp, name)
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        self.access_log = os.path.join(self.dir, "access.log")
        self.error_log = os.path.join(self.dir, "error.log")
        self.conf = os.path.join(self.dir, "nginx.conf")
        self.proc = None
        self.http2 = self._has_http2()
        h.cleanups.append(self.stop)
        last = ""
        for attempt in range(3):  # a picked port can be taken between picking and binding it
            self.https_port, self.http_port = free_port(), free_port()
            if self.https_port == self.http_port:
                continue
            self._write_conf(cert, extra)
            self.proc = subprocess.Popen([NGINX, "-p", self.dir + "/", "-c", self.conf, "-e", self.error_log],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=open(os.path.join(self.dir, "stderr.log"), "ab"))
            alive = lambda: self.proc.poll() is None  # noqa: E731
            if wait_accepting(self.https_port, 15, alive) and wait_accepting(self.http_port, 15, alive):
                return
            last = self._errors()
            self.stop()
        raise RuntimeError(f"nginx did not start: {last}")

    @staticmethod
    def _has_http2() -> bool:
        try:
            r = subprocess.run([NGINX, "-V"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return "http_v2_module" in r.stderr + r.stdout

    def _write_conf(self, cert: dict, extra: str) -> None:
        d = self.dir
        user = "user root root;" if os.geteuid() == 0 else ""
        h2 = " http2" if self.http2 else ""
        temps = "\n".join(f"  {k}_temp_path {d}/tmp/{k};" for k in
                          ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        server_common = f"""
    root {self.root};
    access_log {self.access_log} tpkg;
    location / {{ }}
{extra}
"""
        conf = f"""# generated by remote_servers.py
daemon off;
master_process on;
worker_processes 1;
{user}
pid {d}/nginx.pid;
error_log {self.error_log} warn;
events {{ worker_connections 256; }}
http {{
  default_type application/octet-stream;
  types {{ application/json json; text/plain txt; }}
  log_format tpkg '{LOG_FORMAT}';
  access_log {self.access_log} tpkg;
{temps}
  sendfile on;
  keepalive_timeout 60;
  keepalive_requests 100000;
  server {{
    listen 127.0.0.1:{self.https_port} ssl{h2};
    server_name localhost 127.0.0.1;
    ssl_certificate {cert['cert']};
    ssl_certificate_key {cert['key']};
    ssl_protocols TLSv1.2 TLSv1.3;
{server_common}
  }}
  server {{
    listen 127.0.0.1:{self.http_port};
    server_name localhost 127.0.0.1;
{server_common}
  }}
}}
"""
        with open(self.conf, "w") as f:
            f.write(conf)

    def _errors(self) -> str:
        text = ""
        for p in (self.error_log, os.path.join(self.dir, "stderr.log")):
            try:
                text += open(p, errors="replace").read()[-600:]
            except OSError:
                pass
        return text.strip()

    def https(self, path: str) -> str:
        return f"https://127.0.0.1:{self.https_port}/{path.lstrip('/')}"

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}/{path.lstrip('/')}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # access log: mark() before an action, requests(since=mark) after it
    def entries(self) -> list[dict]:
        out = []
        try:
            with open(self.access_log, errors="replace") as f:
                for line in f:
                    m = LOG_RE.match(line.strip())
                    if not m:
                        continue
                    out.append({"t": float(m[1]), "method": m[2], "path": m[3], "status": int(m[4]),
                                "bytes": int(m[5]), "range": None if m[6] == "-" else m[6],
                                "port": int(m[7]), "protocol": m[8], "connection": int(m[9]),
                                "connection_requests": int(m[10])})
        except FileNotFoundError:
            pass
        return out

    def mark(self) -> int:
        return len(self.entries())

    def requests(self, since: int = 0, path: str | None = None) -> list[dict]:
        """Log entries after `since` (for `path` only if given). nginx writes a line when a
        request ends, so this waits (bounded) until the line count stops growing."""
        e = settled(self.entries)[since:]
        return [x for x in e if path is None or x["path"] == "/" + path.lstrip("/")]

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)  # fast shutdown
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
        # the workers exit with the master; make sure (bounded) that none is left listening
        for port in (self.https_port, self.http_port):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        pass
                except OSError:
                    break
                time.sleep(0.1)


# -- httpfault.py -----------------------------------------------------------------------------

class FaultProcess:
    """httpfault.py in a subprocess (so that a busy test thread cannot starve it), controlled over
    HTTP: control(mode=..., **params), stats(), url(path)."""

    def __init__(self, h, root: str, mode: str = "ok", **params):
        self.h = h
        self.root = root
        self.log = open(os.path.join(h.tmp, f"httpfault-{len(h.cleanups)}.log"), "ab")
        self.proc = subprocess.Popen([sys.executable, HTTPFAULT, "--root", root, "--port", "0", "--mode", mode,
                                      "--config", json.dumps(params), "--exit-with-parent"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log)
        h.cleanups.append(self.stop)
        port = read_port_line(self.proc)
        if port is None:
            self.stop()
            raise RuntimeError("httpfault.py did not start (see its log)")
        self.port = port
        if not wait_accepting(self.port, 10, lambda: self.proc.poll() is None):
            self.stop()
            raise RuntimeError("httpfault.py does not accept connections")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def _call(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url(path), data=data, method="POST" if data is not None else "GET")
        with urllib.request.urlopen(req, timeout=15) as r:
            return json.loads(r.read() or b"{}")

    def control(self, **cfg) -> dict:
        return self._call("__control", cfg)

    def stats(self) -> dict:
        return self._call("__stats")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None:
            return
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        if p.stdout:
            p.stdout.close()
        self.log.close()
