#!/usr/bin/env python3
"""s3://BUCKET/KEY packages: the CLI verbs and mount.torshpkg against s3rver (npm, installed by
scripts/install-deps) behind s3_server.py's SigV4-verifying gateway (s3rver itself does not check
V4 signatures and misreads suffix ranges; see s3_server.py). Covers the endpoint (AWS_ENDPOINT_URL_S3,
AWS_ENDPOINT_URL, -o s3_endpoint= / --s3-endpoint), the region (-o s3_region= / --s3-region,
AWS_REGION, AWS_DEFAULT_REGION, the profile's region in AWS_CONFIG_FILE, us-east-1), credentials
(environment, session token, AWS_SHARED_CREDENTIALS_FILE and ~/.aws/credentials with AWS_PROFILE,
anonymous), 403 and 404 at open and at mount, the disk cache, .torshpkg/stats, and that no secret is
ever printed. Needs root, /dev/fuse and s3rver; servers bind 127.0.0.1 on free ports and are stopped
by the Harness cleanup. Never talks to AWS: every command names a local endpoint.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tpkgtest import MOUNT, TORSHPKG, Harness, inspect_json, mount_procs, tail, walk  # noqa: E402
from test_remote import (all_ok, file_digests, num, one_line, read_stats, read_tree,  # noqa: E402
                         summary)
import remote_servers as rms  # noqa: E402
import s3_server as s3  # noqa: E402

BUCKET = "models"
KEY = "pkg/model.tpkg"
LOC = f"s3://{BUCKET}/{KEY}"
ODD_KEY = "pkg/dir with space/model+v1.tpkg"  # percent-encoding of the key, in the URL and the signature
MISSING = f"s3://{BUCKET}/pkg/missing.tpkg"


def main():
    # Nothing of the machine's AWS setup may leak into the product's children: every command gets
    # exactly the AWS_* variables (and HOME) that the check names.
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[k]

    with Harness("s3", deadline=840) as h:
        T = h.tmp
        if not h.check(f"s3rver is installed ({s3.S3RVER})", os.access(s3.S3RVER, os.X_OK),
                       "install it (scripts/install-deps)"):
            return

        # credentials: AWS-like, with the '/' and '+' real secret keys have; random, so that
        # grepping every output for them means something
        key_id = "AKIATPKG" + secrets.token_hex(6).upper()
        secret = "tpkg/S3+" + secrets.token_urlsafe(24)
        key_id2 = "AKIATPKG" + secrets.token_hex(6).upper()
        secret2 = "tpkg/S3+" + secrets.token_urlsafe(24)
        key_id3 = "ASIATPKG" + secrets.token_hex(6).upper()  # temporary credentials
        secret3 = "tpkg/S3+" + secrets.token_urlsafe(24)
        token3 = "IQoJb3JpZ2lu/" + secrets.token_urlsafe(48) + "+=="
        wrong = "tpkg/WRONG+" + secrets.token_urlsafe(24)
        secret_values = {"secret": secret, "secret2": secret2, "secret3": secret3, "session token": token3,
                         "wrong secret": wrong}
        captured: list[tuple[str, bytes]] = []  # every stdout/stderr/log/stats the product gave

        empty_home = os.path.join(T, "home-empty")
        os.makedirs(empty_home)
        nowhere = os.path.join(T, "nowhere")
        isolated = {"HOME": empty_home, "AWS_SHARED_CREDENTIALS_FILE": os.path.join(nowhere, "credentials"),
                    "AWS_CONFIG_FILE": os.path.join(nowhere, "config")}

        def env_of(**kw) -> dict:
            e = dict(isolated)
            e.update(kw)
            return {k: v for k, v in e.items() if v is not None}

        def cli(*args, env: dict, binary=False, timeout=120, label=None):
            r = h.run([TORSHPKG, *args], env=env, binary=binary, timeout=timeout)
            lab = label or " ".join(str(a) for a in args[:2])
            for stream in (r.stdout, r.stderr):
                captured.append((lab, stream if isinstance(stream, bytes) else stream.encode()))
            return r

        def mount(loc, mnt, *opts, env: dict, timeout=90):
            """mount.torshpkg with exactly `env`'s AWS setup; registered for the Harness cleanup."""
            full = dict(os.environ)
            full.update(env)
            rc, raw = rms.run_mount(h, MOUNT, loc, mnt, opts, full, timeout)
            captured.append((f"mount {mnt}", raw))
            return rc, raw.decode("utf-8", "replace")

        def stats_of(mnt):
            st, why = read_stats(mnt)
            try:
                with open(os.path.join(mnt, ".torshpkg", "stats"), "rb") as f:
                    captured.append((f"stats {mnt}", f.read()))
            except OSError:
                pass
            return st, why

        def leaked(text) -> list[str]:
            b = text if isinstance(text, bytes) else (text or "").encode()
            return [name for name, v in secret_values.items() if v.encode() in b]

        n_mnt = [0]

        def new_mnt(label):
            n_mnt[0] += 1
            return os.path.join(T, f"mnt-{n_mnt[0]:02d}-{label}")

        def signed_by(reqs, kid, region="us-east-1") -> tuple[bool, str]:
            bad = [r for r in reqs if r.get("auth") != "sigv4" or r.get("key_id") != kid or r.get("region") != region
                   or r.get("content_sha256") != s3.UNSIGNED or r.get("service") != "s3"]
            desc = "; ".join(f"{r.get('method')} {r.get('path')} auth={r.get('auth')} key={r.get('key_id')} "
                             f"region={r.get('region')} sha256={r.get('content_sha256')} -> {r.get('status')} "
                             f"{r.get('error', '')}" for r in (bad or reqs)[:4])
            return bool(reqs) and not bad, f"{len(reqs)} requests, {len(bad)} not as expected: {desc}"

        # ---------------------------------------------------------------------------------------
        h.section("model, package, key, s3rver, gateways")
        src = os.path.join(T, "src")
        h.gen_model(src, "--weights-size", "16M", "--shards", "3", "--small-files", "12", "--seed", "23")
        shards = sorted(glob.glob(os.path.join(src, "*.safetensors")))
        h.check("the model has 3 safetensors shards", len(shards) == 3, f"{shards}")
        want = file_digests(src)
        small = "config.json" if "config.json" in want else sorted(want, key=lambda r: os.path.getsize(os.path.join(src, r)))[0]
        small_bytes = open(os.path.join(src, small), "rb").read()
        shard_rel = os.path.relpath(shards[0], src)

        keyp = os.path.join(T, "signing")
        r = h.tpkg("keygen", "-o", keyp)
        h.check("keygen", r.returncode == 0, tail(r.stderr))
        pub = keyp + ".pub"
        pkg = os.path.join(T, "model.tpkg")
        r = h.tpkg("pack", src, "-o", pkg, "--name", "model", "--version", "1.0.0", "--chunk-size", "256K",
                   "--sign", keyp + ".key", "-q", timeout=600)
        if not h.check("pack --chunk-size 256K --sign", r.returncode == 0, tail(r.stderr)):
            return
        size = os.path.getsize(pkg)
        pkg_bytes = open(pkg, "rb").read()
        local = inspect_json(h, pkg) or {}
        h.note(f"model.tpkg: {size} bytes, {local.get('chunks')} chunks")

        srv = s3.S3rver(h, buckets=(BUCKET,))
        h.check("s3rver runs on 127.0.0.1", srv.alive(), srv.errors())
        h.note(f"s3rver {srv.endpoint} (data in {srv.data})")
        st_, etag = srv.put_object(BUCKET, KEY, pkg)
        h.check(f"PUT {BUCKET}/{KEY} into s3rver: 200", st_ == 200, f"status {st_}")
        st_, etag2 = srv.put_object(BUCKET, ODD_KEY, pkg)
        h.check(f"PUT {BUCKET}/{ODD_KEY!r} into s3rver: 200", st_ == 200, f"status {st_}")
        st_, length = srv.head_object(BUCKET, KEY)
        h.check("HEAD of the object: 200 and the package's size", st_ == 200 and length == size, f"{st_}, {length} of {size}")

        creds = {key_id: secret, key_id2: secret2, key_id3: secret3}
        gw = s3.S3Gateway(h, srv, credentials=creds, tokens={key_id3: token3}, anonymous=False, name="s3gw-private")
        pub_gw = s3.S3Gateway(h, srv, credentials=creds, tokens={key_id3: token3}, anonymous=True, name="s3gw-public")
        h.check("the gateways run (private bucket: signed requests only; public: anonymous too)",
                gw.alive() and pub_gw.alive(), gw.errors() + pub_gw.errors())
        h.note(f"gateway (private) {gw.endpoint}, gateway (public) {pub_gw.endpoint}")

        h.section("the test servers themselves")
        url = gw.url(BUCKET, KEY)

        def get(u, headers, timeout=30):
            try:
                with urllib.request.urlopen(urllib.request.Request(u, headers=headers), timeout=timeout) as resp:
                    return resp.status, resp.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()

        code, body = get(url, s3.sign_request("GET", url, key_id, secret, headers={"Range": "bytes=100-199"}))
        h.check("gateway: a SigV4-signed Range GET (python signer) -> 206 and the bytes", code == 206 and body == pkg_bytes[100:200],
                f"{code} {body[:200]!r}")
        code, body = get(url, s3.sign_request("GET", url, key_id, wrong, headers={"Range": "bytes=100-199"}))
        h.check("gateway: the same request signed with a wrong secret -> 403 SignatureDoesNotMatch",
                code == 403 and b"SignatureDoesNotMatch" in body, f"{code} {body[:200]!r}")
        code, body = get(url, {"Range": "bytes=-128"})
        h.check("gateway (private): an anonymous request -> 403 AccessDenied", code == 403 and b"AccessDenied" in body,
                f"{code} {body[:200]!r}")
        code, body = get(pub_gw.url(BUCKET, KEY), {"Range": "bytes=-128"})
        h.check("gateway (public): an anonymous suffix range bytes=-128 -> 206 and the last 128 bytes",
                code == 206 and body == pkg_bytes[-128:], f"{code} {len(body)} bytes")
        code, body = get(srv.url(BUCKET, KEY), {"Range": "bytes=-128"})
        h.note(f"s3rver itself answers bytes=-128 with {code}, {len(body)} bytes, "
               f"{'the last 128' if body == pkg_bytes[-128:] else 'NOT the last 128 (its suffix-range bug)'}")
        code, body = get(srv.url(BUCKET, KEY), s3.sign_request("GET", srv.url(BUCKET, KEY), s3.S3RVER_KEY_ID, wrong,
                                                                headers={"Range": "bytes=0-99"}))
        h.note(f"s3rver itself answers a request for its key id S3RVER signed with a wrong secret with {code} "
               f"({'it does not verify V4 signatures' if code == 206 else body[:80]!r})")
        curl = shutil.which("curl")
        if curl:
            sig = ["--aws-sigv4", "aws:amz:us-east-1:s3", "-H", f"x-amz-content-sha256: {s3.UNSIGNED}"]
            outp = os.path.join(T, "curl.out")
            for label, user, want_code in (("right", f"{key_id}:{secret}", "206"), ("wrong", f"{key_id}:{wrong}", "403")):
                rr = subprocess.run([curl, "-s", "-o", outp, "-w", "%{http_code}", *sig, "--user", user, "-r", "0-99", url],
                                    capture_output=True, text=True, timeout=60)
                got = open(outp, "rb").read() if os.path.exists(outp) else b""
                ok = rr.stdout == want_code and (got == pkg_bytes[:100] if want_code == "206" else b"SignatureDoesNotMatch" in got)
                h.check(f"gateway: curl --aws-sigv4 (libcurl's signer) Range GET, {label} secret -> {want_code}", ok,
                        f"{rr.stdout} {got[:200]!r}")
        else:
            h.note("no curl binary: the libcurl-signer cross-check of the gateway is skipped")

        # ---------------------------------------------------------------------------------------
        h.section("CLI verbs on s3:// (endpoint and keys from the environment)")
        env = env_of(AWS_ENDPOINT_URL_S3=gw.endpoint, AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret)
        m0 = gw.mark()
        r = cli("inspect", LOC, env=env)
        h.check(f"inspect {LOC} exits 0 and shows the package", r.returncode == 0 and "model" in r.stdout,
                f"exit {r.returncode}: {tail(r.stderr or r.stdout)}")
        h.check("inspect names the package s3://BUCKET/KEY (not the endpoint URL)",
                r.returncode == 0 and (LOC in r.stdout or gw.endpoint not in r.stdout),
                f"{tail(r.stdout, 300)}")
        r = cli("inspect", "--json", LOC, env=env)
        try:
            j = json.loads(r.stdout) if r.returncode == 0 else {}
        except ValueError:
            j = {}
        h.check("inspect --json: the same root digest and chunk count as the local file",
                j.get("root_sha256") == local.get("root_sha256") and j.get("chunks") == local.get("chunks"),
                f"exit {r.returncode}: {j.get('root_sha256')} vs {local.get('root_sha256')}: {tail(r.stderr)}")
        r = cli("ls", LOC, env=env)
        h.check("ls lists the root entries", r.returncode == 0 and all(n in r.stdout for n in os.listdir(src)),
                f"exit {r.returncode}: {tail(r.stdout + r.stderr)}")
        r = cli("cat", LOC, small, env=env, binary=True)
        h.check(f"cat {small} == the source", r.returncode == 0 and r.stdout == small_bytes,
                f"exit {r.returncode}: {tail(r.stderr)}")
        r = cli("cat", LOC, shard_rel, env=env, binary=True)
        h.check(f"cat {shard_rel} == the source",
                r.returncode == 0 and hashlib.sha256(r.stdout).hexdigest() == want[shard_rel],
                f"exit {r.returncode}, {len(r.stdout)} bytes: {tail(r.stderr)}")
        r = cli("verify", LOC, "--pubkey", pub, env=env, timeout=300)
        h.check("verify --pubkey exits 0", r.returncode == 0, f"exit {r.returncode}: {tail(r.stdout + r.stderr)}")
        out = os.path.join(T, "extracted")
        r = cli("extract", LOC, out, env=env, timeout=300)
        got = file_digests(out) if os.path.isdir(out) else {}
        h.check("extract DIR exits 0 and gives the source's files byte-exact",
                r.returncode == 0 and got == want, f"exit {r.returncode}: {tail(r.stderr)}; "
                f"differ: {sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))[:5]}")
        reqs = gw.requests(m0)
        ok, why = signed_by(reqs, key_id)
        h.check("every request was SigV4-signed with the environment's key, region us-east-1, "
                "x-amz-content-sha256 UNSIGNED-PAYLOAD", ok, why)
        h.check(f"every request was path-style /{BUCKET}/{KEY}", reqs and all(e["path"] == f"/{BUCKET}/{KEY}" for e in reqs),
                f"{sorted({e['path'] for e in reqs})[:4]}")
        gets = [e for e in reqs if e["method"] == "GET"]
        h.check("reads are Range requests answered 206", gets and all(e.get("range") and e["status"] == 206 for e in gets),
                f"{[(e.get('range'), e['status']) for e in gets if not (e.get('range') and e['status'] == 206)][:5]}")
        h.note(f"{len(reqs)} requests for the CLI verbs; signed headers {sorted({';'.join(e.get('signed_headers') or []) for e in reqs})}")

        h.section("endpoint")
        dead = f"http://127.0.0.1:{s3.free_port()}"  # nobody listens there
        keys = {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
        m0 = gw.mark()
        r = cli("cat", LOC, small, env=env_of(AWS_ENDPOINT_URL=gw.endpoint, **keys), binary=True)
        h.check("AWS_ENDPOINT_URL (the generic one) works: cat gives the bytes", r.returncode == 0 and r.stdout == small_bytes,
                f"exit {r.returncode}: {tail(r.stderr)}")
        r = cli("cat", LOC, small, env=env_of(AWS_ENDPOINT_URL=dead, AWS_ENDPOINT_URL_S3=gw.endpoint, **keys), binary=True)
        h.check("AWS_ENDPOINT_URL_S3 wins over AWS_ENDPOINT_URL", r.returncode == 0 and r.stdout == small_bytes,
                f"exit {r.returncode}: {tail(r.stderr)}")
        r = cli("cat", LOC, small, "--s3-endpoint", gw.endpoint, env=env_of(**keys), binary=True)
        h.check("--s3-endpoint URL (no endpoint in the environment) works", r.returncode == 0 and r.stdout == small_bytes,
                f"exit {r.returncode}: {tail(r.stderr)}")
        r = cli("cat", LOC, small, "--s3-endpoint", gw.endpoint, env=env_of(AWS_ENDPOINT_URL_S3=dead, **keys), binary=True)
        h.check("--s3-endpoint wins over AWS_ENDPOINT_URL_S3", r.returncode == 0 and r.stdout == small_bytes,
                f"exit {r.returncode}: {tail(r.stderr)}")
        m1 = gw.mark()
        r = cli("inspect", LOC, env=env_of(AWS_ENDPOINT_URL_S3=gw.endpoint + "/", **keys))
        reqs = gw.requests(m1)
        h.check("an endpoint with a trailing slash: exit 0, requests for /BUCKET/KEY (no double slash)",
                r.returncode == 0 and reqs and all(e["path"] == f"/{BUCKET}/{KEY}" for e in reqs),
                f"exit {r.returncode}: {tail(r.stderr)}; paths {sorted({e['path'] for e in reqs})}")
        m1 = gw.mark()
        odd = f"s3://{BUCKET}/{ODD_KEY}"
        r = cli("cat", odd, small, env=env_of(AWS_ENDPOINT_URL_S3=gw.endpoint, **keys), binary=True)
        reqs = gw.requests(m1)
        h.check(f"a key with a space and '+' ({odd!r}): cat gives the bytes (percent-encoded and signed right)",
                r.returncode == 0 and r.stdout == small_bytes,
                f"exit {r.returncode}: {tail(r.stderr)}; gateway saw "
                f"{[(e['path'], e['status'], e.get('error')) for e in reqs][:3]}")
        ok, why = signed_by(gw.requests(m0), key_id)
        h.check("the endpoint checks' requests were all signed with the environment's key", ok, why)

        h.section("region")
        for label, extra, args, want_region in (
                ("AWS_REGION=eu-west-3", {"AWS_REGION": "eu-west-3"}, (), "eu-west-3"),
                ("AWS_DEFAULT_REGION=ap-south-1", {"AWS_DEFAULT_REGION": "ap-south-1"}, (), "ap-south-1"),
                ("AWS_REGION beats AWS_DEFAULT_REGION", {"AWS_REGION": "eu-west-3", "AWS_DEFAULT_REGION": "ap-south-1"}, (),
                 "eu-west-3"),
                ("--s3-region us-west-2 beats AWS_REGION", {"AWS_REGION": "eu-west-3"}, ("--s3-region", "us-west-2"),
                 "us-west-2")):
            m1 = gw.mark()
            r = cli("inspect", LOC, *args, env=env_of(AWS_ENDPOINT_URL_S3=gw.endpoint, **keys, **extra))
            ok, why = signed_by(gw.requests(m1), key_id, want_region)
            h.check(f"{label}: exit 0, requests signed for region {want_region}", r.returncode == 0 and ok,
                    f"exit {r.returncode}: {tail(r.stderr)}; {why}")
        cfg = os.path.join(T, "aws-config")
        with open(cfg, "w") as f:
            f.write("[default]\nregion = sa-east-1\n\n[profile other]\nregion = ca-central-1\n")
        m1 = gw.mark()
        r = cli("inspect", LOC, env=env_of(AWS_ENDPOINT_URL_S3=gw.endpoint, AWS_CONFIG_FILE=cfg, **keys))
        ok, why = signed_by(gw.requests(m1), key_id, "sa-east-1")
        h.check("the default profile's region in AWS_CONFIG_FILE (sa-east-1) is used when no variable sets one",
                r.returncode == 0 and ok, f"exit {r.returncode}: {tail(r.stderr)}; {why}")

        h.section("credentials")
        cred_file = os.path.join(T, "aws-credentials")
        with open(cred_file, "w") as f:
            f.write(f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n\n"
                    f"[other]\naws_access_key_id={key_id2}\naws_secret_access_key={secret2}\n")
        os.chmod(cred_file, 0o600)
        ep = {"AWS_ENDPOINT_URL_S3": gw.endpoint}
        for label, e, want_key in (
                ("AWS_SHARED_CREDENTIALS_FILE, profile default (no keys in the environment)",
                 env_of(**ep, AWS_SHARED_CREDENTIALS_FILE=cred_file), key_id),
                ("AWS_SHARED_CREDENTIALS_FILE with AWS_PROFILE=other",
                 env_of(**ep, AWS_SHARED_CREDENTIALS_FILE=cred_file, AWS_PROFILE="other"), key_id2),
                ("keys in the environment win over the credentials file",
                 env_of(**ep, AWS_SHARED_CREDENTIALS_FILE=cred_file, AWS_PROFILE="other", **keys), key_id)):
            m1 = gw.mark()
            r = cli("cat", LOC, small, env=e, binary=True)
            ok, why = signed_by(gw.requests(m1), want_key)
            h.check(f"{label}: cat gives the bytes, requests signed with {'the profile' if want_key != key_id else 'that'} key",
                    r.returncode == 0 and r.stdout == small_bytes and ok, f"exit {r.returncode}: {tail(r.stderr)}; {why}")
        home = os.path.join(T, "home")
        os.makedirs(os.path.join(home, ".aws"))
        shutil.copy(cred_file, os.path.join(home, ".aws", "credentials"))
        e = env_of(**ep, HOME=home)
        del e["AWS_SHARED_CREDENTIALS_FILE"]
        m1 = gw.mark()
        r = cli("cat", LOC, small, env=e, binary=True)
        ok, why = signed_by(gw.requests(m1), key_id)
        h.check("~/.aws/credentials (HOME, no AWS_SHARED_CREDENTIALS_FILE): cat gives the bytes, signed with its key",
                r.returncode == 0 and r.stdout == small_bytes and ok, f"exit {r.returncode}: {tail(r.stderr)}; {why}")
        m1 = gw.mark()
        r = cli("cat", LOC, small, env=env_of(**ep, AWS_ACCESS_KEY_ID=key_id3, AWS_SECRET_ACCESS_KEY=secret3,
                                              AWS_SESSION_TOKEN=token3), binary=True)
        reqs = gw.requests(m1)
        ok, why = signed_by(reqs, key_id3)
        h.check("temporary credentials (AWS_SESSION_TOKEN): cat gives the bytes, every request carries the token "
                "(x-amz-security-token, signed)",
                r.returncode == 0 and r.stdout == small_bytes and ok and all(e.get("token_signed") for e in reqs),
                f"exit {r.returncode}: {tail(r.stderr)}; {why}; token sent/signed "
                f"{[(e.get('token'), e.get('token_signed')) for e in reqs][:3]}")

        m1 = pub_gw.mark()
        r = cli("cat", LOC, small, env=env_of(AWS_ENDPOINT_URL_S3=pub_gw.endpoint), binary=True)
        reqs = pub_gw.requests(m1)
        h.check("no credentials at all, a public bucket: cat gives the bytes with anonymous requests (no Authorization)",
                r.returncode == 0 and r.stdout == small_bytes and reqs and all(e.get("auth") == "anonymous" for e in reqs),
                f"exit {r.returncode}: {tail(r.stderr)}; {[(e.get('auth'), e['status']) for e in reqs][:3]}")

        for label, e, code_word in (
                ("no credentials, a private bucket (403 AccessDenied)", env_of(**ep), "403"),
                ("a wrong secret key (403 SignatureDoesNotMatch)", env_of(**ep, AWS_ACCESS_KEY_ID=key_id,
                                                                          AWS_SECRET_ACCESS_KEY=wrong), "403"),
                ("an unknown access key id (403 InvalidAccessKeyId)",
                 env_of(**ep, AWS_ACCESS_KEY_ID="AKIATPKGNOBODY0000", AWS_SECRET_ACCESS_KEY=wrong), "403"),
                ("a wrong secret in the credentials file", None, "403")):
            if e is None:
                bad_file = os.path.join(T, "aws-credentials-bad")
                with open(bad_file, "w") as f:
                    f.write(f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {wrong}\n")
                e = env_of(**ep, AWS_SHARED_CREDENTIALS_FILE=bad_file)
            r = cli("inspect", LOC, env=e)
            h.note(f"stderr: {tail(r.stderr, 300)}")
            h.check(f"{label}: inspect exits 3 with one line naming {LOC} and {code_word}",
                    r.returncode == 3 and one_line(r.stderr) and LOC in r.stderr and code_word in r.stderr,
                    f"exit {r.returncode}: {r.stderr!r:.400}")

        h.section("404")
        r = cli("inspect", MISSING, env=env)
        h.note(f"stderr: {tail(r.stderr, 300)}")
        h.check(f"a missing key (NoSuchKey): inspect exits 3 with one line naming {MISSING}",
                r.returncode == 3 and one_line(r.stderr) and MISSING in r.stderr, f"exit {r.returncode}: {r.stderr!r:.400}")
        r = cli("cat", MISSING, small, env=env, binary=True)
        err = r.stderr.decode("utf-8", "replace")
        h.check("a missing key: cat exits 3 with one line naming it, nothing on stdout",
                r.returncode == 3 and one_line(err) and MISSING in err and not r.stdout, f"exit {r.returncode}: {err!r:.400}")
        nob = f"s3://no-such-bucket/{KEY}"
        r = cli("inspect", nob, env=env)
        h.check(f"a missing bucket (NoSuchBucket): inspect exits 3 with one line naming {nob}",
                r.returncode == 3 and one_line(r.stderr) and nob in r.stderr, f"exit {r.returncode}: {r.stderr!r:.400}")

        # ---------------------------------------------------------------------------------------
        h.section("mount.torshpkg s3://")
        cache = os.path.join(T, "cache")
        mnt = new_mnt("s3")
        m0 = gw.mark()
        opts = ("-o", f"s3_endpoint={gw.endpoint},pubkey={pub},cache_dir={cache}")
        rc, log = mount(LOC, mnt, *opts, env=env_of(**keys))
        if mounted := h.check(f"mount {LOC} MNT -o s3_endpoint=...,pubkey=...,cache_dir=DIR (keys in the environment) "
                   "exits 0 and mounts", rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}"):
            h.check("ls of the root lists the model's entries", sorted(os.listdir(mnt)) == sorted(os.listdir(src)),
                    f"{sorted(set(os.listdir(mnt)) ^ set(os.listdir(src)))}")
            res = read_tree(mnt, want)
            h.check(f"all {len(want)} files read back byte-exact (4 concurrent readers)", all_ok(res), summary(res))
            h.check("the mounted tree has the same entries as the source", walk(mnt) == walk(src),
                    f"{sorted(set(walk(mnt)) ^ set(walk(src)))[:5]}")
            st, why = stats_of(mnt)
            h.check(f"stats: a JSON object that names {LOC}, requests > 0, bytes_fetched > 0",
                    st is not None and LOC in json.dumps(st) and num(st, "requests") > 0 and num(st, "bytes_fetched") > 0,
                    why or json.dumps({k: st.get(k) for k in ("mirror", "requests", "bytes_fetched", "mirrors")})[:400])
            if st is not None:
                h.note("stats: " + json.dumps({k: st.get(k) for k in ("mirror", "requests", "bytes_fetched",
                                                                      "bytes_from_cache", "retries")}))
                h.check("stats do not show the endpoint's URL with the bucket and key instead of s3://",
                        gw.url(BUCKET, KEY) not in json.dumps(st), json.dumps(st)[:400])
            cmdlines = []
            for pid in mount_procs(mnt):
                try:
                    cmdlines.append(open(f"/proc/{pid}/cmdline", "rb").read())
                except OSError:
                    pass
            h.check("the daemon's command line holds no secret", not any(leaked(c) for c in cmdlines),
                    f"{[leaked(c) for c in cmdlines]}")
        h.unmount(mnt)
        if mounted:
            reqs = gw.requests(m0)
            ok, why = signed_by(reqs, key_id)
            h.check("the mount's requests were all signed with the environment's key for us-east-1", ok, why)
            fetched = sum(e.get("bytes", 0) for e in reqs)
            h.check("reading everything fetched about the package once (< 1.25x its size)", 0 < fetched < 1.25 * size,
                    f"{fetched} bytes for a {size}-byte package")
            entries = [p for p in glob.glob(os.path.join(cache, "chunks", "*", "*")) if os.path.isfile(p)]
            h.check("cache_dir= holds chunk entries afterwards", len(entries) > 0, f"{len(entries)} entries in {cache}")

        mnt = new_mnt("s3-warm")
        m0 = gw.mark()
        rc, log = mount(LOC, mnt, "-o", f"s3_endpoint={gw.endpoint},s3_region=eu-north-1,pubkey={pub},cache_dir={cache}",
                        env=env_of(**keys))
        if mounted := h.check("mount again with the warm cache and -o s3_region=eu-north-1: exits 0",
                              rc == 0 and os.path.ismount(mnt),
                   f"exit {rc}: {tail(log)}"):
            res = read_tree(mnt, want)
            h.check("warm: every file byte-exact", all_ok(res), summary(res))
            st, why = stats_of(mnt)
            h.check("warm: chunks come from the cache (bytes_from_cache > 0, bytes_fetched < 1/8 of the package)",
                    st is not None and num(st, "bytes_from_cache") > 0 and 0 <= num(st, "bytes_fetched") < size / 8,
                    why or json.dumps({k: st.get(k) for k in ("bytes_fetched", "bytes_from_cache")}))
        h.unmount(mnt)
        if mounted:
            reqs = gw.requests(m0)
            sent = sum(e.get("bytes", 0) for e in reqs)
            ok, why = signed_by(reqs, key_id, "eu-north-1")
            h.check("warm: the gateway sent < 1/8 of the package, requests signed for eu-north-1 (-o s3_region=)",
                    sent < size / 8 and ok, f"{sent} bytes; {why}")

        mnt = new_mnt("s3-credfile")
        m0 = gw.mark()
        rc, log = mount(LOC, mnt, "-o", f"pubkey={pub},cache_dir=none",
                        env=env_of(AWS_ENDPOINT_URL_S3=gw.endpoint, AWS_SHARED_CREDENTIALS_FILE=cred_file))
        if mounted := h.check("mount with the endpoint in AWS_ENDPOINT_URL_S3 and keys from AWS_SHARED_CREDENTIALS_FILE: "
                              "exits 0",
                   rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}"):
            res = read_tree(mnt, want, only=lambda rel: rel in (small, shard_rel))
            h.check(f"credentials-file mount: {small} and {shard_rel} byte-exact", all_ok(res), summary(res))
            stats_of(mnt)
        h.unmount(mnt)
        if mounted:
            ok, why = signed_by(gw.requests(m0), key_id)
            h.check("credentials-file mount: requests signed with the file's default key", ok, why)

        for label, loc, e in (("a wrong secret (403)", LOC, env_of(AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=wrong)),
                              ("no credentials, a private bucket (403)", LOC, env_of()),
                              ("a missing key (404)", MISSING, env_of(**keys))):
            mnt = new_mnt("s3-err")
            t0 = time.monotonic()
            rc, log = mount(loc, mnt, "-o", f"s3_endpoint={gw.endpoint},pubkey={pub},cache_dir=none", env=e, timeout=60)
            took = time.monotonic() - t0
            h.note(f"mount.torshpkg said: {tail(log, 300)}")
            h.check(f"mount with {label}: exit 3, nothing mounted, one line naming {loc}",
                    rc == 3 and not os.path.ismount(mnt) and one_line(log) and loc in log,
                    f"exit {rc} after {took:.1f} s: {log!r:.400}")
            h.unmount(mnt)

        # ---------------------------------------------------------------------------------------
        h.section("secrets")
        hits = [(lab, leaked(text)) for lab, text in captured if leaked(text)]
        h.check(f"no secret key or session token in any output ({len(captured)} stdout/stderr/log/stats captures)",
                not hits, "; ".join(f"{lab}: {names}" for lab, names in hits[:6]))

        h.section("servers")
        h.check("s3rver and both gateways are still running", srv.alive() and gw.alive() and pub_gw.alive(),
                srv.errors() + gw.errors() + pub_gw.errors())
        ports = [srv.port, gw.port, pub_gw.port]
        for x in (pub_gw, gw, srv):
            x.stop()
        open_ports = [p for p in ports if s3.wait_accepting(p, 0.5)]
        h.check("after stop() nothing listens on their ports", not open_ports, f"{open_ports}")


if __name__ == "__main__":
    main()
