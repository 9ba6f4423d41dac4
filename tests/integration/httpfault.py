#!/usr/bin/env python3
"""A small HTTP/1.1 static file server with fault injection, for the remote-package tests.

Stdlib only. Serves the files under --root (GET and HEAD, keep-alive, single Range requests
including open `bytes=N-` and suffix `bytes=-N` ranges, 206 + Content-Range, 416, ETag,
Last-Modified, Content-Length, If-Range and If-Match), and injects one fault mode at a time:

  ok        behave
  reset     send part of the body, then close with SO_LINGER 0 (the peer sees a TCP RST)
  truncate  announce the full Content-Length, send part of the body, then close (FIN)
  slow      sleep `delay` seconds before the headers (where="before") or halfway through the
            body (where="mid")
  norange   ignore Range: answer 200 with the whole file
  status    answer with `code` (e.g. 503, 500, 429 + Retry-After: `retry_after`) instead
  corrupt   flip one byte of the body where it covers file offsets [corrupt_lo, corrupt_hi)
            (default [4096, end of file)), so chunk data is wrong while the tail can stay right

Which requests a fault hits (all bounded):
  after=N         let the first N eligible requests through untouched (default 0)
  fraction=F      hit an eligible request with probability F, from random.Random(seed) (default 1)
  limit=N         hit at most N requests in this mode, then behave (default 20; status: `count`)
  ranged_only=B   only requests with a Range header (default false)
  min_start / max_start  only requests whose first byte offset lies in [min_start, max_start]
Independent of the mode:
  path_status={"/x.tpkg": 404}   always answer that status for these paths
  replace={"/model.tpkg": "/abs/other.tpkg"}  serve that file under that name from now on

Control (JSON): POST /__control {"mode": "reset", "fraction": 0.5, ...} replaces the mode and its
parameters (a missing parameter gets its default; path_status and replace are merged, a null value
removes an entry; "reset_stats": true zeroes the counters). GET /__stats returns the counters and
the last requests. /__ paths are never faulted nor counted.

Standalone:  python3 httpfault.py --root DIR [--port 0] [--mode reset] [--config '{"fraction":0.5}']
prints the port it listens on (127.0.0.1 only) as its first line, then serves until SIGTERM/SIGINT.
"""
from __future__ import annotations

import argparse
import email.utils
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = ("ok", "reset", "truncate", "slow", "norange", "status", "corrupt")
DEFAULTS = {
    "after": 0,
    "fraction": 1.0,
    "limit": 20,
    "seed": 1,
    "ranged_only": False,
    "min_start": 0,
    "max_start": None,
    "delay": 5.0,  # slow
    "where": "before",  # slow: before | mid
    "part": 0.5,  # reset / truncate: share of the body sent before the fault
    "code": 503,  # status
    "count": 3,  # status: how many requests get `code`
    "retry_after": None,  # status: Retry-After header value (seconds)
    "corrupt_lo": 4096,
    "corrupt_hi": None,
}
MAX_LOG = 5000
BLOCK = 64 * 1024


class FaultState:
    def __init__(self, root: str, mode: str = "ok", **params):
        self.root = os.path.realpath(root)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.path_status: dict[str, int] = {}
        self.replace: dict[str, str] = {}
        self.gen = 0  # bumped by reset_stats: requests begun before are not counted in the new stats
        self.wake = threading.Event()  # set (and replaced) when the mode changes: ends the stalls
        self.reset_stats()
        self.configure({"mode": mode, **params})

    def reset_stats(self) -> None:
        self.gen += 1
        self.stats = {"requests": 0, "ranged": 0, "bytes_sent": 0, "faults": {}, "status": {},
                      "eligible": 0, "log": []}

    def configure(self, cfg: dict) -> None:
        with self.lock:
            if cfg.get("reset_stats"):
                self.reset_stats()
            for k, v in (cfg.get("path_status") or {}).items():
                if v is None:
                    self.path_status.pop(k, None)
                else:
                    self.path_status[k] = int(v)
            for k, v in (cfg.get("replace") or {}).items():
                if v is None:
                    self.replace.pop(k, None)
                else:
                    self.replace[k] = os.path.realpath(v)
            if "mode" in cfg:
                mode = cfg["mode"]
                if mode not in MODES:
                    raise ValueError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
                unknown = set(cfg) - set(DEFAULTS) - {"mode", "path_status", "replace", "reset_stats"}
                if unknown:
                    raise ValueError(f"unknown parameters {sorted(unknown)}")
                self.wake.set()
                self.wake = threading.Event()
                self.mode = mode
                self.p = {k: cfg.get(k, v) for k, v in DEFAULTS.items()}
                if mode == "status" and "limit" not in cfg:
                    self.p["limit"] = self.p["count"]
                self.rng = random.Random(self.p["seed"])
                self.seen = 0  # eligible requests since the mode was set
                self.hits = 0  # faults injected since the mode was set

    def decide(self, ranged: bool, start: int | None, gen: int | None = None) -> str:
        """The fault for one request ("ok" for none); counts it."""
        with self.lock:
            if gen is not None and gen != self.gen:
                return "ok"
            self.stats["requests"] += 1
            self.stats["ranged"] += bool(ranged)
            mode, p = self.mode, self.p
            if mode == "ok":
                return "ok"
            if p["ranged_only"] and not ranged:
                return "ok"
            s = start or 0
            if s < (p["min_start"] or 0) or (p["max_start"] is not None and s > p["max_start"]):
                return "ok"
            self.seen += 1
            self.stats["eligible"] += 1
            if self.seen <= p["after"] or self.hits >= p["limit"]:
                return "ok"
            if p["fraction"] < 1 and self.rng.random() >= p["fraction"]:
                return "ok"
            self.hits += 1
            self.stats["faults"][mode] = self.stats["faults"].get(mode, 0) + 1
            return mode

    def record(self, method, path, rng, status, sent, fault, begun=None, gen=None) -> None:
        with self.lock:
            if gen is not None and gen != self.gen:
                return  # begun before the counters were reset
            self.stats["status"][str(status)] = self.stats["status"].get(str(status), 0) + 1
            self.stats["bytes_sent"] += sent
            log = self.stats["log"]
            log.append({"t": round(time.time(), 3), "begun": round(begun or time.time(), 3), "method": method, "path": path, "range": rng,
                        "status": status, "bytes": sent, "fault": fault})
            if len(log) > MAX_LOG:
                del log[: len(log) - MAX_LOG]

    def snapshot(self) -> dict:
        with self.lock:
            return json.loads(json.dumps({**self.stats, "mode": self.mode, "params": self.p,
                                          "path_status": self.path_status, "replace": self.replace}))

    def resolve(self, urlpath: str) -> str | None:
        with self.lock:
            if urlpath in self.replace:
                return self.replace[urlpath]
        rel = urllib.parse.unquote(urlpath).lstrip("/")
        full = os.path.realpath(os.path.join(self.root, rel))
        if full != self.root and not full.startswith(self.root + os.sep):
            return None
        return full


def parse_range(header: str, size: int):
    """(start, end inclusive) for one satisfiable range; "unsatisfiable"; or None to ignore it
    (malformed or several ranges: a server may always answer 200 with the whole body)."""
    h = header.strip()
    if not h.lower().startswith("bytes="):
        return None
    spec = h[6:].strip()
    if "," in spec:
        return None
    a, sep, b = spec.partition("-")
    if not sep:
        return None
    a, b = a.strip(), b.strip()
    try:
        if a == "":
            if b == "":
                return None
            n = int(b)
            if n < 0:
                return None
            if n == 0 or size == 0:
                return "unsatisfiable"
            return (max(0, size - n), size - 1)
        start = int(a)
        end = int(b) if b != "" else size - 1
    except ValueError:
        return None
    if start < 0:
        return None
    if start >= size:
        return "unsatisfiable"
    if end < start:
        return None
    return (start, min(end, size - 1))


def etag_of(st: os.stat_result) -> str:
    return '"%x-%x-%x"' % (st.st_mtime_ns // 1000, st.st_size, st.st_ino)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "httpfault/1"
    timeout = 60  # idle keep-alive connections are dropped after this

    def log_message(self, fmt, *args):  # quiet
        pass

    @property
    def state(self) -> FaultState:
        return self.server.state  # type: ignore[attr-defined]

    # -- helpers ------------------------------------------------------------------------------
    def _simple(self, code: int, body: bytes = b"", ctype="text/plain", extra=None, head=False):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)
        return len(body) if not head else 0

    def _sleep(self, seconds: float) -> bool:
        """Stalls; False when woken early by a mode change or shutdown (then the request is dropped)."""
        end = time.monotonic() + max(0.0, float(seconds))
        while not self._wake.is_set() and not self.state.stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return True
            self._wake.wait(min(left, 0.25))
        return False

    def _rst(self) -> None:
        """Closes the connection with a TCP RST."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        for f in (self.wfile, self.rfile):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.connection.close()
        except OSError:
            pass
        self.close_connection = True

    # -- control ------------------------------------------------------------------------------
    def _control(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b"{}"
        try:
            self.state.configure(json.loads(raw or b"{}"))
        except (ValueError, TypeError) as e:
            self._simple(400, (str(e) + "\n").encode())
            return
        self._simple(200, json.dumps(self.state.snapshot()["params"]).encode(), "application/json")

    def do_POST(self):
        if self.path.split("?")[0] == "/__control":
            self._control()
        else:
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
            self._simple(405, b"method not allowed\n", extra={"Allow": "GET, HEAD"})

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    # -- files --------------------------------------------------------------------------------
    def _serve(self, head: bool) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/__stats":
            self._simple(200, json.dumps(self.state.snapshot()).encode(), "application/json", head=head)
            return
        st = self.state
        rng_header = self.headers.get("Range")
        begun = time.time()
        with st.lock:
            forced = st.path_status.get(path)
            gen, self._wake = st.gen, st.wake

        def rec(status, sent, fault):
            st.record(self.command, path, rng_header, status, sent, fault, begun, gen)

        if forced is not None:
            st.decide(bool(rng_header), None, gen)
            sent = self._simple(forced, f"{forced}\n".encode(), head=head)
            rec(forced, sent, "path_status")
            return
        full = st.resolve(path)
        try:
            f = open(full, "rb") if full else None
            if f is None:
                raise FileNotFoundError
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            st.decide(bool(rng_header), None, gen)
            sent = self._simple(404, b"not found\n", head=head)
            rec(404, sent, None)
            return
        except PermissionError:
            st.decide(bool(rng_header), None, gen)
            sent = self._simple(403, b"forbidden\n", head=head)
            rec(403, sent, None)
            return
        with f:
            fs = os.fstat(f.fileno())
            size = fs.st_size
            etag = etag_of(fs)
            rng = parse_range(rng_header, size) if rng_header else None
            if rng is not None:
                if_range = self.headers.get("If-Range")
                if if_range is not None and if_range.strip() != etag and \
                        if_range.strip() != email.utils.formatdate(fs.st_mtime, usegmt=True):
                    rng = None  # the representation changed: the whole new one
            start = rng[0] if isinstance(rng, tuple) else (0 if rng is None else None)
            fault = st.decide(rng_header is not None, start, gen)
            with st.lock:
                p = st.p
            if fault == "norange":
                rng = None
                start = 0
            if fault == "slow" and p["where"] == "before" and not self._sleep(p["delay"]):
                self._rst()  # woken by a mode change: the client gave up long ago
                rec(0, 0, "slow (dropped)")
                return
            if fault == "status":
                extra = {}
                if p["retry_after"] is not None:
                    extra["Retry-After"] = str(p["retry_after"])
                code = int(p["code"])
                sent = self._simple(code, f"injected {code}\n".encode(), extra=extra, head=head)
                rec(code, sent, fault)
                return
            if_match = self.headers.get("If-Match")
            if if_match is not None and if_match.strip() != "*" and \
                    etag not in [x.strip() for x in if_match.split(",")]:
                sent = self._simple(412, b"precondition failed\n", head=head)
                rec(412, sent, fault if fault != "ok" else None)
                return
            common = {"ETag": etag, "Last-Modified": email.utils.formatdate(fs.st_mtime, usegmt=True),
                      "Accept-Ranges": "bytes" if fault != "norange" else "none"}
            if rng == "unsatisfiable":
                sent = self._simple(416, b"range not satisfiable\n",
                                    extra={**common, "Content-Range": f"bytes */{size}"}, head=head)
                rec(416, sent, fault if fault != "ok" else None)
                return
            if isinstance(rng, tuple):
                lo, hi = rng
                code = 206
            else:
                lo, hi = 0, size - 1
                code = 200
            length = hi - lo + 1 if size else 0
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(length))
                for k, v in common.items():
                    self.send_header(k, v)
                if code == 206:
                    self.send_header("Content-Range", f"bytes {lo}-{hi}/{size}")
                self.end_headers()
            except OSError:  # the client is gone (e.g. it timed out during a stall)
                self.close_connection = True
                rec(code, 0, fault if fault != "ok" else None)
                return
            sent = 0
            if head:
                rec(code, 0, fault if fault != "ok" else None)
                return
            cut = None  # bytes to send before a reset/truncate/mid-slow
            if fault in ("reset", "truncate", "slow") and (fault != "slow" or p["where"] == "mid"):
                cut = max(0, min(length - 1, int(length * float(p["part"])))) if length else 0
            flip = None  # absolute file offset of the byte to flip
            if fault == "corrupt":
                clo = max(lo, int(p["corrupt_lo"] or 0))
                chi = min(hi + 1, size if p["corrupt_hi"] is None else int(p["corrupt_hi"]))
                if clo < chi:
                    flip = clo
            try:
                f.seek(lo)
                pos = lo
                end = lo + length
                while pos < end:
                    n = min(BLOCK, end - pos)
                    if cut is not None and pos - lo < cut:
                        n = min(n, cut - (pos - lo))
                    elif cut is not None and pos - lo >= cut:
                        if fault == "slow":
                            if not self._sleep(p["delay"]):
                                self._rst()
                                rec(code, sent, "slow (dropped)")
                                return
                            cut = None
                            continue
                        break
                    buf = f.read(n)
                    if not buf:
                        break
                    if flip is not None and pos <= flip < pos + len(buf):
                        b = bytearray(buf)
                        b[flip - pos] ^= 0x5A
                        buf = bytes(b)
                    self.wfile.write(buf)
                    pos += len(buf)
                    sent += len(buf)
                if fault == "reset":
                    self._rst()
                elif fault == "truncate":
                    self.wfile.flush()
                    self.close_connection = True
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout, OSError):
                self.close_connection = True
            rec(code, sent, fault if fault != "ok" else None)

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, ValueError, OSError):
            self.close_connection = True


class FaultServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, root: str, port: int = 0, mode: str = "ok", **params):
        self.state = FaultState(root, mode, **params)
        super().__init__(("127.0.0.1", port), Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def handle_error(self, request, client_address):  # no tracebacks for dropped connections
        pass

    def start_thread(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self.state.stop.set()
        self.state.wake.set()
        self.shutdown()
        self.server_close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="HTTP/1.1 static file server with fault injection (127.0.0.1 only)")
    ap.add_argument("--root", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--mode", default="ok", choices=MODES)
    ap.add_argument("--config", default="{}", help="JSON object: mode parameters, path_status, replace")
    ap.add_argument("--exit-with-parent", action="store_true", help="exit when the parent process dies")
    ap.add_argument("--max-seconds", type=float, default=4 * 3600, help="exit after this long (default 4 h)")
    a = ap.parse_args(argv)
    cfg = json.loads(a.config)
    srv = FaultServer(a.root, a.port, "ok")
    srv.state.configure({"mode": a.mode, **cfg})
    parent = os.getppid()

    def bye(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, bye)
    signal.signal(signal.SIGINT, bye)
    print(srv.port, flush=True)
    srv.start_thread()
    try:
        end = time.monotonic() + a.max_seconds
        while time.monotonic() < end:  # until a signal, the parent's death or --max-seconds
            time.sleep(0.5)
            if a.exit_with_parent and os.getppid() != parent:
                break
    except SystemExit:
        pass
    finally:
        srv.state.stop.set()
        srv.shutdown()
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
