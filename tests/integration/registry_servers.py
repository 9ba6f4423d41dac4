"""OCI registries for the oci:// tests: Debian's docker-registry (distribution 2.8, installed by
scripts/install-deps) as a child of the test, a stdlib OCI pusher, and a stdlib Docker token service
for the bearer-token flow (ES256 JWTs signed with the openssl CLI).

    reg = Registry(h)                                   # anonymous, plain HTTP
    ca = remote_servers.make_ca(h.tmp, "ca")
    reg2 = Registry(h, tls=remote_servers.make_server_cert(h.tmp, ca), users={"alice": pw})
    digest = push(reg.base, "org/model", "1.0.0", "model.tpkg", name="model", version="1.0.0",
                  root="HEX")                           # -> "sha256:..." of the manifest
    tok = TokenServer(h, cert, ca, users={"alice": pw})  # a Docker token service (bearer flow)
    reg3 = Registry(h, tls=cert, token=tok, data=reg.data)  # the same storage, bearer-token auth
    m = reg.mark(); ...; reg.requests(m, path_prefix="/v2/org/model/blobs/")
    reg.blob_path(digest)                               # the blob's data file in the storage dir

The registry gets a generated config: filesystem storage in its own temp dir, http.addr
127.0.0.1:FREEPORT, deletes enabled, no upload purging, no blob descriptor cache (so that a blob
file removed from the storage dir is seen at once), no debug server, no redis, no notifications,
no health checks; with `tls` a certificate (the chain) and key; with `users` htpasswd basic auth
(bcrypt, `htpasswd -Bbn`). Its application log (JSON lines; "response completed" entries have the
authenticated user, but there is none for a 401) goes to NAME/registry.log; the Apache-style access
log (every request: method, URI, status, bytes, user agent) goes to NAME/access.log, which is what
entries()/requests() parse. Neither logs the Range header: a ranged blob GET shows as status 206.

Everything listens on 127.0.0.1 only, is stopped by the Harness cleanup (h.cleanups), also when the
test fails, and dies with the test process (PR_SET_PDEATHSIG). Every wait is bounded.
"""
from __future__ import annotations

import base64
import ctypes
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import remote_servers as rms  # noqa: E402

DOCKER_REGISTRY = os.environ.get("DOCKER_REGISTRY", shutil.which("docker-registry") or "/usr/bin/docker-registry")
HTPASSWD = os.environ.get("HTPASSWD", shutil.which("htpasswd") or "/usr/bin/htpasswd")
SKOPEO = os.environ.get("SKOPEO", shutil.which("skopeo") or "/usr/bin/skopeo")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
ARTIFACT_TYPE = "application/vnd.torshpkg.package.v1"
TPKG_LAYER = "application/vnd.torshpkg.package.v1.tpkg"
EMPTY_BYTES = b"{}"
EMPTY_DIGEST = "sha256:" + hashlib.sha256(EMPTY_BYTES).hexdigest()


free_port = rms.free_port


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


_die_with_parent = rms.die_with_parent


# -- HTTP -----------------------------------------------------------------------------------------

def request(url: str, method: str = "GET", body=None, headers: dict | None = None, auth=None,
            cafile: str | None = None, insecure: bool = False, timeout: float = 60,
            length: int | None = None) -> tuple[int, dict, bytes]:
    """One HTTP(S) request with http.client. body: bytes or a binary file object (then `length`
    is its Content-Length). Returns (status, headers with lower-case names, body)."""
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        ctx = ssl.create_default_context(cafile=cafile)
        if insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    hdrs = dict(headers or {})
    if auth:
        hdrs["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    if body is not None:
        hdrs.setdefault("Content-Length", str(length if length is not None else len(body)))
    elif method in ("POST", "PUT"):
        hdrs.setdefault("Content-Length", "0")
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    try:
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


class PushError(RuntimeError):
    pass


def _file_digest(path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
            n += len(b)
    return "sha256:" + h.hexdigest(), n


def push_blob(base: str, repo: str, digest: str, size: int, data=None, path: str | None = None,
              auth=None, cafile: str | None = None) -> bool:
    """Uploads one blob unless the registry has it (HEAD first): POST an upload session, then one
    monolithic PUT <location>&digest=. Returns True when it uploaded, False when it existed."""
    kw = {"auth": auth, "cafile": cafile}
    st, _, _ = request(f"{base}/v2/{repo}/blobs/{digest}", "HEAD", **kw)
    if st == 200:
        return False
    st, hdrs, body = request(f"{base}/v2/{repo}/blobs/uploads/", "POST", **kw)
    if st != 202 or "location" not in hdrs:
        raise PushError(f"POST /v2/{repo}/blobs/uploads/: {st} {body[:300]!r}")
    loc = urllib.parse.urljoin(base + "/", hdrs["location"])
    loc += ("&" if "?" in loc else "?") + "digest=" + urllib.parse.quote(digest, safe="")
    h = {"Content-Type": "application/octet-stream"}
    if path is not None:
        with open(path, "rb") as f:
            st, hdrs, body = request(loc, "PUT", body=f, length=size, headers=h, timeout=300, **kw)
    else:
        st, hdrs, body = request(loc, "PUT", body=data, headers=h, **kw)
    if st != 201:
        raise PushError(f"PUT blob {digest}: {st} {body[:300]!r}")
    if hdrs.get("docker-content-digest", digest) != digest:
        raise PushError(f"PUT blob {digest}: the registry says {hdrs.get('docker-content-digest')}")
    return True


def manifest_for(tpkg_digest: str, tpkg_size: int, name: str, version: str, root: str) -> dict:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": len(EMPTY_BYTES)},
        "layers": [{"mediaType": TPKG_LAYER, "digest": tpkg_digest, "size": tpkg_size,
                    "annotations": {"org.opencontainers.image.title": "model.tpkg"}}],
        "annotations": {"org.opencontainers.image.title": name,
                        "org.opencontainers.image.version": version,
                        "dev.torshpkg.root.sha256": root},
    }


def put_manifest(base: str, repo: str, ref: str, manifest: dict | bytes, auth=None, cafile: str | None = None,
                 media_type: str = OCI_MANIFEST) -> str:
    """PUT /v2/REPO/manifests/REF; returns the manifest digest (checked against the registry's)."""
    raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    st, hdrs, body = request(f"{base}/v2/{repo}/manifests/{ref}", "PUT", body=raw,
                             headers={"Content-Type": media_type}, auth=auth, cafile=cafile)
    if st != 201:
        raise PushError(f"PUT /v2/{repo}/manifests/{ref}: {st} {body[:300]!r}")
    got = hdrs.get("docker-content-digest")
    if got and got != digest:
        raise PushError(f"PUT manifest {ref}: the registry computed {got}, not {digest}")
    return digest


def push(base: str, repo: str, tag: str, tpkg_path: str, auth=None, cafile: str | None = None,
         name: str = "model", version: str = "1.0.0", root: str = "") -> str:
    """Pushes tpkg_path as a torshpkg OCI artifact REPO:TAG to the registry at `base`
    (http(s)://127.0.0.1:PORT): the empty config blob, the .tpkg as one blob, the manifest.
    Returns the manifest digest "sha256:HEX"."""
    base = base.rstrip("/")
    push_blob(base, repo, EMPTY_DIGEST, len(EMPTY_BYTES), data=EMPTY_BYTES, auth=auth, cafile=cafile)
    digest, size = _file_digest(tpkg_path)
    push_blob(base, repo, digest, size, path=tpkg_path, auth=auth, cafile=cafile)
    return put_manifest(base, repo, tag, manifest_for(digest, size, name, version, root), auth=auth, cafile=cafile)


# -- docker-registry --------------------------------------------------------------------------------

class Registry:
    """docker-registry serve CONFIG as a child of the test on 127.0.0.1:FREEPORT.
    tls: {"cert", "key", "chain"} from remote_servers.make_server_cert (HTTPS) or None (HTTP);
    users: {user: password} for htpasswd basic auth, or None (anonymous);
    token: a TokenServer for the bearer-token flow instead (auth.token: realm, service, issuer, its
    signing certificate's CA as rootcertbundle); data: another registry's storage dir to serve."""

    def __init__(self, h, tls: dict | None = None, users: dict[str, str] | None = None, name: str = "registry",
                 token: "TokenServer | None" = None, data: str | None = None):
        self.h = h
        self.tls = tls
        self.users = users
        self.token = token
        self.dir = os.path.join(h.tmp, name)
        self.data = data or os.path.join(self.dir, "data")
        os.makedirs(self.dir, exist_ok=True)
        os.makedirs(self.data, exist_ok=True)
        self.conf = os.path.join(self.dir, "config.yml")
        self.log_path = os.path.join(self.dir, "registry.log")
        self.access_path = os.path.join(self.dir, "access.log")
        self.htpasswd = os.path.join(self.dir, "htpasswd")
        self.proc = None
        self.port = 0
        h.cleanups.append(self.stop)
        if not os.access(DOCKER_REGISTRY, os.X_OK):
            raise RuntimeError(f"docker-registry is not installed ({DOCKER_REGISTRY}; scripts/install-deps)")
        if users:
            lines = []
            for user, pw in users.items():
                r = subprocess.run([HTPASSWD, "-Bbn", user, pw], capture_output=True, text=True, timeout=60)
                if r.returncode != 0:
                    raise RuntimeError(f"htpasswd -Bbn failed: {r.stderr.strip()[-300:]}")
                lines.append(r.stdout.strip())
            with open(self.htpasswd, "w") as f:
                f.write("\n".join(lines) + "\n")
        last = ""
        for _attempt in range(3):  # a picked port can be taken between picking and binding it
            self.port = free_port()
            self._write_conf()
            env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
            with open(self.log_path, "ab") as log, open(self.access_path, "ab") as acc:
                self.proc = subprocess.Popen([DOCKER_REGISTRY, "serve", self.conf], stdin=subprocess.DEVNULL,
                                             stdout=acc, stderr=log, env=env, cwd=self.dir,
                                             preexec_fn=_die_with_parent)
            if self._answers():
                return
            last = self.errors()
            self.stop()
        raise RuntimeError(f"docker-registry did not start: {last}")

    def _write_conf(self) -> None:
        # JSON is YAML: no quoting problems with paths
        conf = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "json", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": self.data},
                        "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}, "readonly": {"enabled": False}},
                        "redirect": {"disable": True}},
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": "tpkgtest-" + os.urandom(8).hex(),
                     "headers": {"X-Content-Type-Options": ["nosniff"]}},
        }
        if self.tls:
            conf["http"]["tls"] = {"certificate": self.tls.get("chain") or self.tls["cert"], "key": self.tls["key"]}
        if self.users:
            conf["auth"] = {"htpasswd": {"realm": "torshpkg-test", "path": self.htpasswd}}
        elif self.token:
            t = self.token
            conf["auth"] = {"token": {"realm": t.realm, "service": t.service, "issuer": t.issuer,
                                      "rootcertbundle": t.ca_cert}}
        with open(self.conf, "w") as f:
            json.dump(conf, f, indent=1)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _answers(self, timeout: float = 20) -> bool:
        """GET /v2/ answers 200 (anonymous) or 401 (auth) within `timeout`."""
        want = 401 if self.users or self.token else 200
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            try:
                st, _, _ = request(f"{self.base}/v2/", insecure=True, timeout=3)
                if st == want:
                    return True
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.1)
        return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def errors(self) -> str:
        try:
            return open(self.log_path, errors="replace").read()[-800:].strip()
        except OSError:
            return ""

    # storage layout of distribution's filesystem driver
    def blob_path(self, digest: str) -> str:
        algo, hexd = digest.split(":", 1)
        return os.path.join(self.data, "docker", "registry", "v2", "blobs", algo, hexd[:2], hexd, "data")

    # access log (Apache combined format, one line per request, 401s included); the application
    # log (JSON) has the authenticated user of each request, by request URI and order
    ACCESS_RE = re.compile(r'^(\S+) \S+ (\S+) \[([^\]]*)\] "(\S+) (\S+) ([^"]*)" (\d+) (\d+|-) "([^"]*)" "([^"]*)"')

    def entries(self) -> list[dict]:
        out = []
        try:
            with open(self.access_path, errors="replace") as f:
                for line in f:
                    m = self.ACCESS_RE.match(line.strip())
                    if not m:
                        continue
                    out.append({"method": m[4], "path": m[5], "status": int(m[7]),
                                "bytes": 0 if m[8] == "-" else int(m[8]), "ua": m[10]})
        except FileNotFoundError:
            pass
        return out

    def app_entries(self) -> list[dict]:
        """The application log's "response completed" lines (not written for 401s)."""
        out = []
        try:
            with open(self.log_path, errors="replace") as f:
                for line in f:
                    try:
                        d = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(d, dict) and "http.response.status" in d:
                        out.append({"method": d.get("http.request.method"), "path": d.get("http.request.uri", ""),
                                    "status": int(d.get("http.response.status", 0)),
                                    "bytes": int(d.get("http.response.written", 0) or 0),
                                    "user": d.get("auth.user.name"), "error": d.get("err.code")})
        except FileNotFoundError:
            pass
        return out

    def mark(self) -> int:
        return len(self.entries())

    def requests(self, since: int = 0, path_prefix: str | None = None) -> list[dict]:
        """Entries after `since` (URIs starting with path_prefix if given), once the log stops growing."""
        return [e for e in rms.settled(self.entries)[since:] if path_prefix is None or e["path"].startswith(path_prefix)]

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
        deadline = time.monotonic() + 5
        while self.port and port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)


# -- a bearer token service ---------------------------------------------------------------------------

def _b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _der_ecdsa_to_raw(der: bytes, n: int = 32) -> bytes:
    """An ECDSA signature as DER SEQUENCE { INTEGER r, INTEGER s } -> r || s (JWS ES256)."""
    def read_len(b, i):
        ln = b[i]
        i += 1
        if ln & 0x80:
            k = ln & 0x7F
            ln = int.from_bytes(b[i:i + k], "big")
            i += k
        return ln, i
    if der[0] != 0x30:
        raise ValueError("not a DER sequence")
    _, i = read_len(der, 1)
    out = b""
    for _ in range(2):
        if der[i] != 0x02:
            raise ValueError("not a DER integer")
        ln, i = read_len(der, i + 1)
        out += int.from_bytes(der[i:i + ln], "big").to_bytes(n, "big")
        i += ln
    return out


class TokenServer:
    """A Docker token service (https://docs.docker.com/registry/spec/auth/token/) in a thread of the
    test, on HTTPS 127.0.0.1:FREEPORT with `cert` (make_server_cert; its key is EC P-256): GET
    /token?service=&scope= with HTTP basic auth of one of `users` answers {"token", "access_token",
    "expires_in"} with an ES256 JWT (x5c = the certificate, signed by the `ca` the registry trusts)
    granting what the scope asks for; no or wrong credentials -> 401. self.log: one dict per request
    (path, service, scope, user, status; never a password). self.lifetime: seconds until the
    registry stops accepting a token issued now (distribution allows 60 s of clock skew past "exp",
    so a lifetime under 60 s is reached with an "exp" in the past)."""

    LEEWAY = 60  # distribution/registry/auth/token: Leeway for the exp and nbf checks

    def __init__(self, h, cert: dict, ca: dict, users: dict[str, str], service: str = "torshpkg-test-registry",
                 issuer: str = "torshpkg-test-tokens"):
        self.h = h
        self.cert = cert
        self.ca_cert = ca["cert"]
        self.users = users
        self.service = service
        self.issuer = issuer
        self.lifetime = 300
        self.log: list[dict] = []
        self.issued: list[str] = []  # every token handed out (for "never printed" checks)
        self.lock = threading.Lock()
        der = subprocess.run(["openssl", "x509", "-in", cert["cert"], "-outform", "DER"], capture_output=True,
                             timeout=60, check=True).stdout
        self.x5c = [base64.b64encode(der).decode()]
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _answer(self, status: int, obj: dict, extra: dict | None = None):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                u = urllib.parse.urlsplit(self.path)
                q = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
                user, ok = None, False
                a = self.headers.get("Authorization", "")
                if a.lower().startswith("basic "):
                    try:
                        user, _, pw = base64.b64decode(a[6:].strip()).decode().partition(":")
                        ok = outer.users.get(user) == pw
                    except (ValueError, UnicodeDecodeError):
                        pass
                entry = {"path": u.path, "service": q.get("service"), "scope": q.get("scope"), "user": user}
                if u.path != "/token":
                    status, obj = 404, {"errors": [{"code": "NOT_FOUND"}]}
                elif not ok:
                    status, obj = 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}
                else:
                    status, obj = 200, outer._token(user, q.get("service", ""), q.get("scope", ""))
                entry["status"] = status
                with outer.lock:
                    outer.log.append(entry)
                self._answer(status, obj, {"WWW-Authenticate": 'Basic realm="tokens"'} if status == 401 else None)

        h.cleanups.append(self.stop)
        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.srv.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert.get("chain") or cert["cert"], cert["key"])
        self.srv.socket = ctx.wrap_socket(self.srv.socket, server_side=True)
        self.port = self.srv.server_address[1]
        self.thread = threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"https://127.0.0.1:{self.port}/token"

    def _token(self, user: str, service: str, scope: str) -> dict:
        now = int(time.time())
        access = []
        for sc in scope.split():
            parts = sc.split(":")
            if len(parts) >= 3 and parts[0] == "repository":
                access.append({"type": "repository", "name": ":".join(parts[1:-1]),
                               "actions": [x for x in parts[-1].split(",") if x]})
        header = {"typ": "JWT", "alg": "ES256", "x5c": self.x5c}
        life = int(self.lifetime)
        claims = {"iss": self.issuer, "sub": user, "aud": service, "exp": now + life - self.LEEWAY, "nbf": now - 30,
                  "iat": now,
                  "jti": os.urandom(12).hex(), "access": access}
        signing_input = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.cert["key"]], input=signing_input.encode(),
                             capture_output=True, timeout=60, check=True).stdout
        tok = signing_input + "." + _b64url(_der_ecdsa_to_raw(der))
        with self.lock:
            self.issued.append(tok)
        return {"token": tok, "access_token": tok, "expires_in": life, "issued_at": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}

    def requests(self, since: int = 0) -> list[dict]:
        with self.lock:
            return list(self.log[since:])

    def mark(self) -> int:
        with self.lock:
            return len(self.log)

    def stop(self) -> None:
        srv, self.srv = getattr(self, "srv", None), None
        if srv is None:
            return
        srv.shutdown()
        srv.server_close()


def skopeo_inspect_raw(ref: str, env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """skopeo inspect --raw docker://REF with exactly `env` (HOME etc. pointing at temp dirs)."""
    return subprocess.run([SKOPEO, "inspect", "--raw", *args, f"docker://{ref}"], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)
