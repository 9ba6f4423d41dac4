#!/usr/bin/env python3
"""An S3-compatible test server for the s3:// tests: s3rver (npm, installed by scripts/install-deps),
with a SigV4-verifying gateway in front of it (stdlib only).

    s3 = S3rver(h, buckets=("models",))             # s3rver on 127.0.0.1, a free port, a temp dir
    s3.put_object("models", "pkg/model.tpkg", path) # a signed PUT with s3rver's own account
    gw = S3Gateway(h, s3, credentials={"AKID": "secret"}, tokens={"AKID2": "token"}, anonymous=False)
    gw.endpoint                                     # http://127.0.0.1:PORT, path-style BUCKET/KEY
    m = gw.mark(); ...; gw.requests(m, key="pkg/model.tpkg")   # what the gateway saw, as dicts

Why a gateway: s3rver 3.7.1 checks only that a SigV4 request names an access key id it knows
(S3RVER); it never computes V4 signatures ("Signature version 4 calculation is unimplemeneted" in
its lib/middleware/authentication.js), so a wrong secret goes through. It also answers a suffix
range `bytes=-N` with bytes 0..N (it parses the range as start "" = 0, end N), where S3 sends the
last N bytes. The gateway (this file run as a script, in its own process) verifies AWS Signature
Version 4 header authentication as S3 does (credential scope, SignedHeaders, x-amz-date, the
session token of temporary credentials), answers S3's XML errors (403 SignatureDoesNotMatch,
InvalidAccessKeyId, AccessDenied for anonymous requests unless `anonymous`, 400 for a malformed
Authorization header), turns a suffix range into the explicit range s3rver understands, and
forwards GET and HEAD to s3rver anonymously (s3rver accepts unsigned requests). It logs every
request as one JSON line: method, path, range, status, bytes, and who signed it (access key id,
region, service, signed headers, x-amz-content-sha256, whether a session token came) -- never a
secret -- before it answers, so that mark() after a client's reply counts that request.

Everything listens on 127.0.0.1 only and is stopped by the Harness cleanup (h.cleanups), also when
the test fails; both processes also die with the test process (PR_SET_PDEATHSIG). Waits are bounded.

Standalone gateway:  python3 s3_server.py --upstream PORT [--port 0] --config JSON --log FILE
prints the port it listens on as its first line, then serves until SIGTERM/SIGINT.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import hashlib
import hmac
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import remote_servers as rms  # noqa: E402
S3RVER = os.environ.get("S3RVER", "/opt/torshpkg-test/node_modules/.bin/s3rver")
# s3rver's built-in account (lib/models/account.js: DUMMY_ACCOUNT.createKeyPair('S3RVER', 'S3RVER'))
S3RVER_KEY_ID = "S3RVER"
S3RVER_SECRET = "S3RVER"
UNSIGNED = "UNSIGNED-PAYLOAD"


free_port = rms.free_port
wait_accepting = rms.wait_accepting


_die_with_parent = rms.die_with_parent


def _stop_process(p: subprocess.Popen | None, timeout: float = 10) -> None:
    if p is None or p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=timeout)


# -- AWS Signature Version 4 --------------------------------------------------------------------

def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    k = _hmac(("AWS4" + secret).encode(), date)
    k = _hmac(k, region)
    k = _hmac(k, service)
    return _hmac(k, "aws4_request")


def canonical_uri(raw_path: str) -> str:
    """S3 signs the path URI-encoded once (RFC 3986 unreserved characters and '/' kept)."""
    return urllib.parse.quote(urllib.parse.unquote(raw_path), safe="/-_.~")


def canonical_query(raw_query: str) -> str:
    pairs = urllib.parse.parse_qsl(raw_query, keep_blank_values=True)
    enc = lambda s: urllib.parse.quote(s, safe="-_.~")  # noqa: E731
    return "&".join(f"{enc(k)}={enc(v)}" for k, v in sorted(pairs))


def string_to_sign(method: str, raw_path: str, raw_query: str, headers: dict[str, str], signed: list[str],
                   payload_hash: str, amz_date: str, scope: str) -> str:
    canon_headers = "".join(f"{n}:{' '.join(headers.get(n, '').split())}\n" for n in signed)
    creq = "\n".join([method, canonical_uri(raw_path), canonical_query(raw_query), canon_headers,
                      ";".join(signed), payload_hash])
    return "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])


def sign_request(method: str, url: str, key_id: str, secret: str, region: str = "us-east-1",
                 token: str | None = None, payload_hash: str = UNSIGNED, headers: dict | None = None,
                 now: datetime.datetime | None = None) -> dict[str, str]:
    """The headers to send for a SigV4-signed request (header authentication, service s3)."""
    u = urllib.parse.urlsplit(url)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    out = {k.lower(): v for k, v in (headers or {}).items()}
    out["host"] = u.netloc
    out["x-amz-date"] = amz_date
    out["x-amz-content-sha256"] = payload_hash
    if token:
        out["x-amz-security-token"] = token
    signed = sorted(out)
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    sts = string_to_sign(method, u.path or "/", u.query, out, signed, payload_hash, amz_date, scope)
    sig = hmac.new(signing_key(secret, amz_date[:8], region), sts.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = (f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, SignedHeaders={';'.join(signed)}, "
                            f"Signature={sig}")
    del out["host"]
    return out


AUTH_RE = re.compile(r"^AWS4-HMAC-SHA256\s+(.*)$")


def verify_sigv4(method: str, raw_path: str, raw_query: str, headers: dict[str, str],
                 credentials: dict[str, str], tokens: dict[str, str], region: str | None,
                 max_skew: float = 900) -> tuple[int, str, str, dict]:
    """Checks the Authorization header of a request as S3 does. Returns (status, code, message,
    info): status 0 when the signature is right, else the HTTP status and S3 error code to answer.
    info has what the log shows (access key id, region, service, signed headers; no secret)."""
    info = {"auth": "sigv4"}
    auth = headers.get("authorization", "")
    m = AUTH_RE.match(auth)
    if not m:
        info["auth"] = "other"
        return 400, "InvalidArgument", "Unsupported Authorization Type", info
    parts = {}
    for item in m[1].split(","):
        k, _, v = item.strip().partition("=")
        parts[k.strip()] = v.strip()
    cred, signed_s, sig = parts.get("Credential", ""), parts.get("SignedHeaders", ""), parts.get("Signature", "")
    cparts = cred.split("/")
    if len(cparts) != 5 or not signed_s or not re.fullmatch(r"[0-9a-f]{64}", sig):
        return 400, "AuthorizationHeaderMalformed", "The authorization header is malformed", info
    key_id, date, reg, service, term = cparts
    signed = signed_s.split(";")
    info.update(key_id=key_id, region=reg, service=service, signed_headers=signed,
                content_sha256=headers.get("x-amz-content-sha256"),
                token="x-amz-security-token" in headers, token_signed="x-amz-security-token" in signed)
    if term != "aws4_request" or service != "s3":
        return 400, "AuthorizationHeaderMalformed", f"wrong service or terminator in the credential scope: {service}/{term}", info
    if region and reg != region:
        return 400, "AuthorizationHeaderMalformed", f"the region '{reg}' is wrong; expecting '{region}'", info
    if signed != sorted(signed) or "host" not in signed or any(n not in headers for n in signed):
        return 400, "AuthorizationHeaderMalformed", "SignedHeaders must be sorted, include host and name sent headers", info
    amz_date = headers.get("x-amz-date", "")
    try:
        t = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return 403, "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header", info
    if amz_date[:8] != date:
        return 403, "SignatureDoesNotMatch", "the credential scope date is not the x-amz-date date", info
    if abs((datetime.datetime.now(datetime.timezone.utc) - t).total_seconds()) > max_skew:
        return 403, "RequestTimeTooSkewed", "The difference between the request time and the current time is too large.", info
    payload = headers.get("x-amz-content-sha256")
    if not payload:
        return 400, "InvalidRequest", "Missing required header for this request: x-amz-content-sha256", info
    if payload != UNSIGNED and method in ("GET", "HEAD") and payload != hashlib.sha256(b"").hexdigest():
        return 400, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match", info
    if key_id not in credentials:
        return 403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.", info
    sts = string_to_sign(method, raw_path, raw_query, headers, signed, payload, amz_date,
                         f"{date}/{reg}/{service}/{term}")
    want = hmac.new(signing_key(credentials[key_id], date, reg, service), sts.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, sig):
        return 403, "SignatureDoesNotMatch", ("The request signature we calculated does not match the signature "
                                              "you provided. Check your key and signing method."), info
    if key_id in tokens and headers.get("x-amz-security-token") != tokens[key_id]:
        return 403, "InvalidToken", "The provided token is malformed or otherwise invalid.", info
    return 0, "", "", info


def error_xml(code: str, message: str, resource: str) -> bytes:
    esc = lambda s: s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # noqa: E731
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{esc(code)}</Code><Message>{esc(message)}'
            f'</Message><Resource>{esc(resource)}</Resource><RequestId>tpkgtest</RequestId></Error>').encode()


# -- s3rver -------------------------------------------------------------------------------------

class S3rver:
    """s3rver as a child of the test, on 127.0.0.1 and a free port, data in h.tmp/NAME/data,
    with `buckets` created at startup. Path-style URLs: self.url(bucket, key)."""

    def __init__(self, h, buckets=("models",), name: str = "s3rver"):
        self.h = h
        self.dir = os.path.join(h.tmp, name)
        self.data = os.path.join(self.dir, "data")
        os.makedirs(self.data, exist_ok=True)
        self.proc = None
        self.port = 0
        self.log_path = os.path.join(self.dir, "s3rver.log")
        h.cleanups.append(self.stop)
        if not os.access(S3RVER, os.X_OK):
            raise RuntimeError(f"s3rver is not installed at {S3RVER} (scripts/install-deps)")
        last = ""
        for _attempt in range(3):  # a picked port can be taken between picking and binding it
            self.port = free_port()
            args = [S3RVER, "--directory", self.data, "--address", "127.0.0.1", "--port", str(self.port),
                    "--silent", "--no-vhost-buckets"]
            for b in buckets:
                args += ["--configure-bucket", b]
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             preexec_fn=_die_with_parent)
            if wait_accepting(self.port, 30, self.alive) and self._answers():
                return
            last = self.errors()
            self.stop()
        raise RuntimeError(f"s3rver did not start: {last}")

    def _answers(self) -> bool:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.alive():
            try:
                with urllib.request.urlopen(f"{self.endpoint}/", timeout=5) as r:
                    if r.status == 200:
                        return True
            except OSError:
                time.sleep(0.1)
        return False

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, bucket: str, key: str) -> str:
        return f"{self.endpoint}/{bucket}/{urllib.parse.quote(key, safe='/-_.~')}"

    def errors(self) -> str:
        try:
            return open(self.log_path, errors="replace").read()[-600:].strip()
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def request(self, method: str, bucket: str, key: str, body: bytes | None = None, headers: dict | None = None,
                sign: bool = True, timeout: float = 60) -> tuple[int, dict, bytes]:
        """One request straight to s3rver (signed with its own account unless sign=False)."""
        url = self.url(bucket, key)
        hdrs = dict(headers or {})
        if sign:
            payload = hashlib.sha256(body or b"").hexdigest()
            hdrs = sign_request(method, url, S3RVER_KEY_ID, S3RVER_SECRET, payload_hash=payload, headers=hdrs)
        req = urllib.request.Request(url, data=body, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def put_object(self, bucket: str, key: str, path_or_bytes) -> tuple[int, str]:
        """Uploads a file (or bytes) as BUCKET/KEY; returns (status, etag)."""
        if isinstance(path_or_bytes, (bytes, bytearray)):
            body = bytes(path_or_bytes)
        else:
            with open(path_or_bytes, "rb") as f:
                body = f.read()
        status, hdrs, _ = self.request("PUT", bucket, key, body=body,
                                       headers={"Content-Type": "application/octet-stream"}, timeout=120)
        return status, hdrs.get("ETag", "")

    def head_object(self, bucket: str, key: str) -> tuple[int, int]:
        """(status, Content-Length) of BUCKET/KEY."""
        status, hdrs, _ = self.request("HEAD", bucket, key)
        return status, int(hdrs.get("Content-Length", -1))

    def stop(self) -> None:
        p, self.proc = self.proc, None
        _stop_process(p)


# -- the gateway ---------------------------------------------------------------------------------

class S3Gateway:
    """This file as a script, in a subprocess: a SigV4-verifying S3 front for an S3rver.
    credentials {key id: secret}; tokens {key id: session token} for temporary credentials;
    anonymous: whether unsigned requests are let through (a public bucket) or get 403 AccessDenied;
    region: when set, a request signed for another region gets S3's 400."""

    def __init__(self, h, upstream: S3rver, credentials: dict[str, str], tokens: dict[str, str] | None = None,
                 anonymous: bool = False, region: str | None = None, name: str = "s3gw"):
        self.h = h
        self.dir = os.path.join(h.tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.log_path = os.path.join(self.dir, "requests.jsonl")
        self.err_path = os.path.join(self.dir, "stderr.log")
        open(self.log_path, "w").close()
        # the secrets go through a file only root can read, not the command line
        conf = os.path.join(self.dir, "config.json")
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"credentials": credentials, "tokens": tokens or {}, "anonymous": anonymous,
                       "region": region}, f)
        self.err = open(self.err_path, "ab")
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--upstream", str(upstream.port),
                                      "--port", "0", "--config", conf, "--log", self.log_path, "--exit-with-parent"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.err,
                                     preexec_fn=_die_with_parent)
        h.cleanups.append(self.stop)
        port = rms.read_port_line(self.proc)
        if port is None:
            self.stop()
            raise RuntimeError(f"the S3 gateway did not start: {self.errors()}")
        self.port = port
        if not wait_accepting(self.port, 10, self.alive):
            self.stop()
            raise RuntimeError("the S3 gateway does not accept connections")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, bucket: str, key: str) -> str:
        return f"{self.endpoint}/{bucket}/{urllib.parse.quote(key, safe='/-_.~')}"

    def errors(self) -> str:
        try:
            return open(self.err_path, errors="replace").read()[-600:].strip()
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def entries(self) -> list[dict]:
        out = []
        try:
            with open(self.log_path, errors="replace") as f:
                for line in f:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
        except FileNotFoundError:
            pass
        return out

    def mark(self) -> int:
        return len(self.entries())

    def requests(self, since: int = 0, key: str | None = None, bucket: str | None = None) -> list[dict]:
        """Log entries after `since` (only for BUCKET/KEY if given). The gateway writes a request's
        line before it answers; this still waits (bounded, 2 s) until the count stops growing, for
        requests a daemon may still have in flight."""
        e = rms.settled(self.entries)[since:]
        return [x for x in e if (key is None or x.get("key") == key) and (bucket is None or x.get("bucket") == bucket)]

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is not None:
            _stop_process(p)
            if p.stdout:
                p.stdout.close()
        if not self.err.closed:
            self.err.close()


class _State:
    def __init__(self, upstream_port: int, cfg: dict, log_path: str):
        self.upstream_port = upstream_port
        self.credentials = dict(cfg.get("credentials") or {})
        self.tokens = dict(cfg.get("tokens") or {})
        self.anonymous = bool(cfg.get("anonymous"))
        self.region = cfg.get("region")
        self.log_lock = threading.Lock()
        self.log = open(log_path, "a", buffering=1)
        self.local = threading.local()

    def write(self, entry: dict) -> None:
        with self.log_lock:
            self.log.write(json.dumps(entry, sort_keys=True) + "\n")
            self.log.flush()

    def upstream(self, fresh: bool = False) -> http.client.HTTPConnection:
        c = getattr(self.local, "conn", None)
        if c is None or fresh:
            if c is not None:
                c.close()
            c = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
            self.local.conn = c
        return c


FORWARD = ("range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "if-range")
PASS_BACK = ("content-length", "content-range", "content-type", "etag", "last-modified", "accept-ranges")


class GatewayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tpkgtest-s3"

    def log_message(self, fmt, *args):  # quiet
        pass

    def do_GET(self):
        self.serve(head=False)

    def do_HEAD(self):
        self.serve(head=True)

    def _other(self):
        self.answer_error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.", {})

    do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _other

    def answer_error(self, status: int, code: str, message: str, entry: dict) -> None:
        body = error_xml(code, message, urllib.parse.urlsplit(self.path).path)
        entry.update(status=status, error=code, bytes=0 if self.command == "HEAD" else len(body))
        self.finish_entry(entry)
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amz-request-id", "tpkgtest")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def finish_entry(self, entry: dict) -> None:
        entry["ms"] = round((time.monotonic() - entry.pop("_t0")) * 1000, 1)
        self.server.state.write(entry)

    def upstream_call(self, method: str, path: str, headers: dict):
        st = self.server.state
        for attempt in range(2):  # a kept-alive upstream connection can have been closed by s3rver
            c = st.upstream(fresh=attempt > 0)
            try:
                c.request(method, path, headers=headers)
                return c.getresponse()
            except (http.client.HTTPException, OSError):
                if attempt:
                    raise
        raise RuntimeError("unreachable")

    def serve(self, head: bool) -> None:
        st = self.server.state
        u = urllib.parse.urlsplit(self.path)
        hdrs = {k.lower(): v for k, v in self.headers.items()}
        bucket, _, key = urllib.parse.unquote(u.path).lstrip("/").partition("/")
        entry = {"t": time.time(), "_t0": time.monotonic(), "method": self.command, "path": u.path,
                 "query": u.query, "bucket": bucket, "key": key, "range": hdrs.get("range"),
                 "host": hdrs.get("host"), "user_agent": hdrs.get("user-agent")}
        if "authorization" in hdrs:
            status, code, msg, info = verify_sigv4(self.command, u.path, u.query, hdrs, st.credentials,
                                                   st.tokens, st.region)
            entry.update(info)
            if status:
                return self.answer_error(status, code, msg, entry)
        elif "X-Amz-Algorithm" in urllib.parse.parse_qs(u.query) or "Signature" in urllib.parse.parse_qs(u.query):
            entry["auth"] = "query"
            return self.answer_error(400, "NotImplemented", "presigned URLs are not supported by this test server", entry)
        else:
            entry["auth"] = "anonymous"
            if not st.anonymous:
                return self.answer_error(403, "AccessDenied", "Access Denied", entry)
        fwd = {k: v for k, v in hdrs.items() if k in FORWARD}
        rng = hdrs.get("range")
        try:
            m = re.fullmatch(r"bytes=-(\d+)", (rng or "").strip())
            if m:  # s3rver misreads suffix ranges: ask for the explicit range of the last N bytes
                r = self.upstream_call("HEAD", u.path, {})
                r.read()
                if r.status == 200:
                    size = int(r.getheader("Content-Length", "0"))
                    n = int(m[1])
                    if n == 0 or size == 0:
                        return self.answer_error(416, "InvalidRange", "The requested range is not satisfiable", entry)
                    fwd["range"] = f"bytes={max(0, size - n)}-{size - 1}"
                else:
                    fwd.pop("range", None)
                entry["upstream_range"] = fwd.get("range")
            r = self.upstream_call("HEAD" if head else "GET", u.path, fwd)
            body = r.read()  # test-sized objects: whole, so that the log line exists before the reply
        except (http.client.HTTPException, OSError) as e:
            st.upstream(fresh=True)
            return self.answer_error(502, "BadGateway", f"s3rver: {e}", entry)
        entry.update(status=r.status, bytes=0 if head else len(body))
        if r.status >= 400:
            m = re.search(rb"<Code>([^<]*)</Code>", body)
            entry["error"] = m[1].decode("utf-8", "replace") if m else "upstream"
        self.finish_entry(entry)  # before replying: once a client has its answer, mark() counts it
        self.send_response(r.status)
        for name in PASS_BACK:
            v = r.getheader(name)
            if v is not None:
                self.send_header(name.title() if name != "etag" else "ETag", v)
        self.send_header("x-amz-request-id", "tpkgtest")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, ValueError, OSError):
            self.close_connection = True


class GatewayServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, state: _State, port: int = 0):
        self.state = state
        super().__init__(("127.0.0.1", port), GatewayHandler)

    def handle_error(self, request, client_address):
        pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="SigV4-verifying S3 gateway in front of s3rver (127.0.0.1 only)")
    ap.add_argument("--upstream", type=int, required=True, help="s3rver's port on 127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--config", required=True, help="JSON file: credentials, tokens, anonymous, region")
    ap.add_argument("--log", required=True, help="JSON-lines request log")
    ap.add_argument("--exit-with-parent", action="store_true")
    ap.add_argument("--max-seconds", type=float, default=4 * 3600)
    a = ap.parse_args(argv)
    with open(a.config) as f:
        cfg = json.load(f)
    srv = GatewayServer(_State(a.upstream, cfg, a.log), a.port)
    parent = os.getppid()

    def bye(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, bye)
    signal.signal(signal.SIGINT, bye)
    print(srv.server_address[1], flush=True)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    try:
        end = time.monotonic() + a.max_seconds
        while time.monotonic() < end:
            time.sleep(0.5)
            if a.exit_with_parent and os.getppid() != parent:
                break
    except SystemExit:
        pass
    finally:
        srv.shutdown()
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
