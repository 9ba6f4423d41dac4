#!/usr/bin/env python3
"""oci:// packages: the CLI verbs and mount.torshpkg on torshpkg OCI artifacts in Debian's
docker-registry (distribution 2.8; registry_servers.py), pushed by registry_servers.push (the empty
config blob, the .tpkg as the one layer of mediaType application/vnd.torshpkg.package.v1.tpkg, an
OCI image manifest with artifactType application/vnd.torshpkg.package.v1). Covers oci+http:// (an
anonymous plain-HTTP registry) and oci:// (HTTPS with a test CA and htpasswd basic auth), tags,
the default tag "latest", @sha256: digests, repositories with a slash, layer selection, credentials
from REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json and ~/.docker/config.json, 401 (wrong password,
no credentials) and 404 (missing tag, repository, digest) at open and at mount, .torshpkg/stats, a
lazy mount (the tail only), a blob deleted from the registry mid-mount (EIO, never wrong bytes),
the bearer-token flow (docker-registry's auth.token with registry_servers.TokenServer, a Docker
token service issuing ES256 JWTs), and that no password or token is ever printed.
Needs root, /dev/fuse, docker-registry, skopeo and htpasswd (apache2-utils); registries bind
127.0.0.1 on free ports and are stopped by the Harness cleanup. HOME, DOCKER_CONFIG and
XDG_RUNTIME_DIR point at temp dirs for every command, so no real registry config is ever read.
"""
from __future__ import annotations

import base64
import errno
import glob
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tpkgtest import MOUNT, TORSHPKG, Harness, inspect_json, mount_procs, tail, walk  # noqa: E402
from test_remote import (all_ok, file_digests, num, one_line, read_stats, read_tree,  # noqa: E402
                         responsive, summary, tls_words)
import registry_servers as rs  # noqa: E402
import remote_servers as rms  # noqa: E402

REPO = "org/model"
TAG = "1.0.0"
USER = "alice"
CRED_VARS = ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "DOCKER_AUTH_CONFIG", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME",
             "CONTAINERS_REGISTRIES_CONF", "CONTAINERS_AUTH_FILE")


def main():
    for k in CRED_VARS:
        os.environ.pop(k, None)

    with Harness("oci", deadline=840) as h:
        T = h.tmp
        for label, path in (("docker-registry", rs.DOCKER_REGISTRY), ("skopeo", rs.SKOPEO), ("htpasswd", rs.HTPASSWD)):
            if not h.check(f"{label} is installed ({path})", os.access(path, os.X_OK), "install it (scripts/install-deps)"):
                return

        pw = "tpkg/OCI+" + secrets.token_urlsafe(18)
        wrong = "tpkg/WRONG+" + secrets.token_urlsafe(18)
        b64 = lambda u, p: base64.b64encode(f"{u}:{p}".encode()).decode()  # noqa: E731
        secret_values = {"password": pw, "wrong password": wrong, "auth (base64)": b64(USER, pw),
                         "wrong auth (base64)": b64(USER, wrong)}
        captured: list[tuple[str, bytes]] = []

        empty_home = os.path.join(T, "home-empty")
        empty_docker = os.path.join(T, "docker-empty")  # a DOCKER_CONFIG without config.json
        xdg = os.path.join(T, "xdg-runtime")
        for d in (empty_home, empty_docker, xdg):
            os.makedirs(d)
        isolated = {"HOME": empty_home, "DOCKER_CONFIG": empty_docker, "XDG_RUNTIME_DIR": xdg}

        def env_of(**kw) -> dict:
            e = dict(isolated)
            e.update(kw)
            return {k: v for k, v in e.items() if v is not None}

        def full_env(env: dict) -> dict:
            e = {k: v for k, v in os.environ.items() if k not in CRED_VARS and k != "HOME"}
            e.update(env)
            return e

        def cli(*args, env: dict | None = None, binary=False, timeout=120, label=None):
            r = h.run([TORSHPKG, *args], env=env_of() if env is None else env, binary=binary, timeout=timeout)
            lab = label or " ".join(str(a) for a in args[:2])
            for stream in (r.stdout, r.stderr):
                captured.append((lab, stream if isinstance(stream, bytes) else stream.encode()))
            return r

        def mount(loc, mnt, *opts, env: dict | None = None, timeout=90):
            rc, raw = rms.run_mount(h, MOUNT, loc, mnt, opts, full_env(env_of() if env is None else env), timeout)
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

        def docker_config(dirname: str, hostport: str, user: str, password: str) -> str:
            d = os.path.join(T, dirname)
            os.makedirs(d, exist_ok=True)
            p = os.path.join(d, "config.json")
            with open(p, "w") as f:
                json.dump({"auths": {hostport: {"auth": b64(user, password)}}}, f)
            os.chmod(p, 0o600)
            return p

        def blob_gets(reqs, digest):
            return [e for e in reqs if e["method"] == "GET" and e["path"] == f"/v2/{REPO}/blobs/{digest}"]

        def desc(reqs, n=8):
            return ", ".join(f"{e['method']} {e['path'][-40:]} {e['status']} {e['bytes']}" for e in reqs[:n])

        # ---------------------------------------------------------------------------------------
        h.section("model, package, registries, push")
        src = os.path.join(T, "src")
        h.gen_model(src, "--weights-size", "16M", "--shards", "3", "--small-files", "12", "--seed", "29")
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
        r = h.tpkg("pack", src, "-o", pkg, "--name", "model", "--version", TAG, "--chunk-size", "256K",
                   "--sign", keyp + ".key", "-q", timeout=600)
        if not h.check("pack --chunk-size 256K --sign", r.returncode == 0, tail(r.stderr)):
            return
        size = os.path.getsize(pkg)
        pkg_bytes = open(pkg, "rb").read()
        blob = "sha256:" + hashlib.sha256(pkg_bytes).hexdigest()
        local = inspect_json(h, pkg) or {}
        root = local.get("root_sha256") or ""
        h.note(f"model.tpkg: {size} bytes, {local.get('chunks')} chunks, blob {blob}")

        anon = rs.Registry(h, name="registry-anon")
        ca = rms.make_ca(T, "ca")
        other_ca = rms.make_ca(T, "other-ca", cn="another CA")
        cert = rms.make_server_cert(T, ca, "registry")
        priv = rs.Registry(h, tls=cert, users={USER: pw}, name="registry-auth")
        h.check("both registries run (anonymous plain HTTP; HTTPS + htpasswd basic auth)", anon.alive() and priv.alive(),
                anon.errors() + priv.errors())
        h.note(f"anonymous {anon.base} (data {anon.data}); auth {priv.base}")
        creds = (USER, pw)
        digests = {}
        try:
            for tag in (TAG, "latest"):
                digests[("anon", tag)] = rs.push(anon.base, REPO, tag, pkg, name="model", version=TAG, root=root)
                digests[("priv", tag)] = rs.push(priv.base, REPO, tag, pkg, auth=creds, cafile=ca["cert"],
                                                 name="model", version=TAG, root=root)
            pushed = True
        except (rs.PushError, OSError) as e:
            pushed = False
            h.check("push to both registries", False, str(e))
        if not pushed:
            return
        mdig = digests[("anon", TAG)]
        h.check("push: tags 1.0.0 and latest to both registries, one manifest digest",
                len(set(digests.values())) == 1, f"{digests}")
        try:
            rs.push(priv.base, REPO, "nope", pkg, cafile=ca["cert"])
            ok, why = False, "an anonymous push went through"
        except rs.PushError as e:
            ok, why = "401" in str(e), str(e)
        h.check("the auth registry refuses an anonymous push (401)", ok, why[:300])

        # two more artifacts in the anonymous registry: the tpkg layer second, and a single layer of another type
        readme = b"torshpkg test artifact\n"
        readme_d = "sha256:" + hashlib.sha256(readme).hexdigest()
        rs.push_blob(anon.base, REPO, readme_d, len(readme), data=readme)
        m2 = rs.manifest_for(blob, size, "model", TAG, root)
        m2["layers"].insert(0, {"mediaType": "text/plain", "digest": readme_d, "size": len(readme),
                                "annotations": {"org.opencontainers.image.title": "README.txt"}})
        rs.put_manifest(anon.base, REPO, "two-layers", m2)
        m3 = rs.manifest_for(blob, size, "model", TAG, root)
        m3["layers"][0]["mediaType"] = "application/octet-stream"
        rs.put_manifest(anon.base, REPO, "only-layer", m3)

        h.section("the test registries themselves (skopeo, stdlib HTTP)")
        sk_env = full_env(env_of(REGISTRY_AUTH_FILE=os.path.join(T, "nowhere", "auth.json")))
        certdir = os.path.join(T, "skopeo-certs")
        os.makedirs(certdir)
        shutil.copy(ca["cert"], os.path.join(certdir, "ca.crt"))
        for label, reg, args in (("anonymous, --tls-verify=false (plain HTTP)", anon, ("--tls-verify=false",)),
                                 ("HTTPS + auth, --creds --cert-dir", priv, ("--creds", f"{USER}:{pw}", "--cert-dir", certdir))):
            for tag in (TAG, "latest"):
                sk = rs.skopeo_inspect_raw(f"{reg.hostport}/{REPO}:{tag}", sk_env, *args)
                try:
                    man = json.loads(sk.stdout)
                except ValueError:
                    man = {}
                raw = sk.stdout.encode()
                sk_digest_ok = ("sha256:" + hashlib.sha256(raw).hexdigest() == mdig
                                or "sha256:" + hashlib.sha256(raw.rstrip(b"\n")).hexdigest() == mdig)
                lay = (man.get("layers") or [{}])[0]
                h.check(f"skopeo inspect --raw {label} {REPO}:{tag}: the OCI manifest (artifactType, config, the "
                        "tpkg layer's mediaType/digest/size, annotations), digest as pushed",
                        sk.returncode == 0 and man.get("mediaType") == rs.OCI_MANIFEST
                        and man.get("artifactType") == rs.ARTIFACT_TYPE
                        and man.get("config", {}).get("digest") == rs.EMPTY_DIGEST
                        and lay.get("mediaType") == rs.TPKG_LAYER and lay.get("digest") == blob
                        and lay.get("size") == size
                        and man.get("annotations", {}).get("dev.torshpkg.root.sha256") == root and sk_digest_ok,
                        f"exit {sk.returncode}: {tail(sk.stderr, 300)} {sk.stdout[:300]}")
        sk = rs.skopeo_inspect_raw(f"{priv.hostport}/{REPO}:{TAG}", sk_env, "--cert-dir", certdir)
        h.check("skopeo without credentials on the auth registry fails (unauthorized)",
                sk.returncode != 0 and "unauthorized" in sk.stderr.lower(), f"exit {sk.returncode}: {tail(sk.stderr, 300)}")
        st_, hd, body = rs.request(f"{anon.base}/v2/{REPO}/blobs/{blob}", headers={"Range": "bytes=-128"})
        h.check("anonymous registry: a suffix Range GET of the blob -> 206 and the last 128 bytes",
                st_ == 206 and body == pkg_bytes[-128:], f"{st_} {len(body)} bytes {hd.get('content-range')}")
        st_, hd, body = rs.request(f"{priv.base}/v2/{REPO}/blobs/{blob}", headers={"Range": "bytes=100-199"},
                                   auth=creds, cafile=ca["cert"])
        h.check("auth registry: Range GET bytes=100-199 with basic auth -> 206 and the bytes",
                st_ == 206 and body == pkg_bytes[100:200], f"{st_} {len(body)} bytes")
        st_, hd, body = rs.request(f"{priv.base}/v2/{REPO}/blobs/{blob}", headers={"Range": "bytes=100-199"},
                                   auth=(USER, wrong), cafile=ca["cert"])
        h.check("auth registry: the same with a wrong password -> 401 with a Basic challenge",
                st_ == 401 and hd.get("www-authenticate", "").startswith("Basic"), f"{st_} {hd.get('www-authenticate')}")
        h.check("the blob's data file is in the anonymous registry's storage dir", os.path.isfile(anon.blob_path(blob)),
                anon.blob_path(blob))

        # ---------------------------------------------------------------------------------------
        h.section("CLI verbs on oci+http://HOST:PORT/org/model:1.0.0 (anonymous)")
        LOC = f"oci+http://{anon.hostport}/{REPO}:{TAG}"
        m0 = anon.mark()
        r = cli("inspect", LOC)
        h.check(f"inspect {LOC} exits 0 and shows the package", r.returncode == 0 and "model" in r.stdout,
                f"exit {r.returncode}: {tail(r.stderr or r.stdout)}")
        reqs = anon.requests(m0)
        h.check("inspect: GET /v2/org/model/manifests/1.0.0 -> 200, then Range GETs of the blob (206)",
                any(e["method"] == "GET" and e["path"] == f"/v2/{REPO}/manifests/{TAG}" and e["status"] == 200 for e in reqs)
                and blob_gets(reqs, blob) and all(e["status"] == 206 for e in blob_gets(reqs, blob)),
                desc(reqs))
        h.check("inspect fetched only a small part of the blob (< 1/8)",
                0 < sum(e["bytes"] for e in blob_gets(reqs, blob)) < size / 8,
                f"{sum(e['bytes'] for e in blob_gets(reqs, blob))} of {size}")
        r = cli("inspect", "--json", LOC)
        try:
            j = json.loads(r.stdout) if r.returncode == 0 else {}
        except ValueError:
            j = {}
        h.check("inspect --json: the same root digest and chunk count as the local file",
                j.get("root_sha256") == root and j.get("chunks") == local.get("chunks"),
                f"exit {r.returncode}: {j.get('root_sha256')} vs {root}: {tail(r.stderr)}")
        r = cli("ls", LOC)
        h.check("ls lists the root entries", r.returncode == 0 and all(n in r.stdout for n in os.listdir(src)),
                f"exit {r.returncode}: {tail(r.stdout + r.stderr)}")
        r = cli("cat", LOC, small, binary=True)
        h.check(f"cat {small} == the source", r.returncode == 0 and r.stdout == small_bytes,
                f"exit {r.returncode}: {tail(r.stderr)}")
        r = cli("cat", LOC, shard_rel, binary=True)
        h.check(f"cat {shard_rel} == the source",
                r.returncode == 0 and hashlib.sha256(r.stdout).hexdigest() == want[shard_rel],
                f"exit {r.returncode}, {len(r.stdout)} bytes: {tail(r.stderr)}")
        r = cli("verify", LOC, "--pubkey", pub, timeout=300)
        h.check("verify --pubkey exits 0", r.returncode == 0, f"exit {r.returncode}: {tail(r.stdout + r.stderr)}")
        out = os.path.join(T, "extracted")
        r = cli("extract", LOC, out, timeout=300)
        got = file_digests(out) if os.path.isdir(out) else {}
        h.check("extract DIR exits 0 and gives the source's files byte-exact",
                r.returncode == 0 and got == want, f"exit {r.returncode}: {tail(r.stderr)}; "
                f"differ: {sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))[:5]}")
        reqs = anon.requests(m0)
        bad = [e for e in reqs if e["path"].startswith(f"/v2/{REPO}/blobs/") and e["method"] == "GET"
               and e["path"] != f"/v2/{REPO}/blobs/{blob}"]
        h.check("the verbs fetched only the tpkg blob (not the config blob)", not bad, desc(bad))
        h.check("every request of the verbs succeeded (2xx)", reqs and all(200 <= e["status"] < 300 for e in reqs),
                desc([e for e in reqs if not 200 <= e["status"] < 300]))

        m0 = anon.mark()
        nodefault = f"oci+http://{anon.hostport}/{REPO}"
        r = cli("cat", nodefault, small, binary=True)
        reqs = anon.requests(m0)
        h.check(f"no tag ({nodefault}) means latest: cat gives the bytes, GET .../manifests/latest",
                r.returncode == 0 and r.stdout == small_bytes
                and any(e["path"] == f"/v2/{REPO}/manifests/latest" and e["status"] == 200 for e in reqs),
                f"exit {r.returncode}: {tail(r.stderr)}; {desc(reqs)}")
        DLOC = f"oci+http://{anon.hostport}/{REPO}@{mdig}"
        m0 = anon.mark()
        r = cli("inspect", "--json", DLOC)
        try:
            j = json.loads(r.stdout) if r.returncode == 0 else {}
        except ValueError:
            j = {}
        reqs = anon.requests(m0)
        h.check(f"inspect --json {REPO}@sha256:...: the package's root digest, GET .../manifests/sha256:...",
                j.get("root_sha256") == root and any(e["path"] == f"/v2/{REPO}/manifests/{mdig}" for e in reqs),
                f"exit {r.returncode}: {tail(r.stderr)}; {desc(reqs)}")
        r = cli("cat", DLOC, shard_rel, binary=True)
        h.check(f"cat by digest {shard_rel} == the source",
                r.returncode == 0 and hashlib.sha256(r.stdout).hexdigest() == want[shard_rel],
                f"exit {r.returncode}, {len(r.stdout)} bytes: {tail(r.stderr)}")
        for tag, what in (("two-layers", "the tpkg layer after a text/plain layer"),
                          ("only-layer", "the only layer, of mediaType application/octet-stream")):
            r = cli("cat", f"oci+http://{anon.hostport}/{REPO}:{tag}", small, binary=True)
            h.check(f"layer selection: {tag} ({what}): cat gives the bytes", r.returncode == 0 and r.stdout == small_bytes,
                    f"exit {r.returncode}: {tail(r.stderr)}")

        r = cli("inspect", f"oci://{anon.hostport}/{REPO}:{TAG}", timeout=60)
        h.check("oci:// (HTTPS) against the plain-HTTP registry: non-zero exit, one line",
                r.returncode not in (0, None) and one_line(r.stderr), f"exit {r.returncode}: {r.stderr!r:.400}")

        # ---------------------------------------------------------------------------------------
        h.section("oci:// over HTTPS with basic auth")
        PLOC = f"oci://{priv.hostport}/{REPO}:{TAG}"
        PDLOC = f"oci://{priv.hostport}/{REPO}@{mdig}"
        cacert = ("--cacert", ca["cert"])
        dcfg = docker_config("docker-ok", priv.hostport, USER, pw)
        env_dc = env_of(DOCKER_CONFIG=os.path.dirname(dcfg))
        m0 = priv.mark()
        r = cli("inspect", PLOC, *cacert, env=env_dc)
        h.check(f"inspect {PLOC} --cacert, credentials in $DOCKER_CONFIG/config.json: exit 0",
                r.returncode == 0 and "model" in r.stdout, f"exit {r.returncode}: {tail(r.stderr or r.stdout)}")
        r = cli("inspect", "--json", PDLOC, *cacert, env=env_dc)
        try:
            j = json.loads(r.stdout) if r.returncode == 0 else {}
        except ValueError:
            j = {}
        h.check(f"inspect --json {REPO}@sha256:... over HTTPS: the same root digest and chunk count",
                j.get("root_sha256") == root and j.get("chunks") == local.get("chunks"),
                f"exit {r.returncode}: {tail(r.stderr)}")
        r = cli("ls", PDLOC, *cacert, env=env_dc)
        h.check("ls by digest over HTTPS lists the root entries", r.returncode == 0 and all(n in r.stdout for n in os.listdir(src)),
                f"exit {r.returncode}: {tail(r.stdout + r.stderr)}")
        r = cli("cat", PDLOC, small, *cacert, env=env_dc, binary=True)
        h.check(f"cat by digest over HTTPS {small} == the source", r.returncode == 0 and r.stdout == small_bytes,
                f"exit {r.returncode}: {tail(r.stderr)}")
        r = cli("cat", PDLOC, shard_rel, *cacert, env=env_dc, binary=True)
        h.check(f"cat by digest over HTTPS {shard_rel} == the source",
                r.returncode == 0 and hashlib.sha256(r.stdout).hexdigest() == want[shard_rel],
                f"exit {r.returncode}, {len(r.stdout)} bytes: {tail(r.stderr)}")
        r = cli("verify", PDLOC, *cacert, "--pubkey", pub, env=env_dc, timeout=300)
        h.check("verify by digest over HTTPS --pubkey exits 0", r.returncode == 0, f"exit {r.returncode}: {tail(r.stdout + r.stderr)}")
        out = os.path.join(T, "extracted-https")
        r = cli("extract", PDLOC, out, *cacert, env=env_dc, timeout=300)
        got = file_digests(out) if os.path.isdir(out) else {}
        h.check("extract by digest over HTTPS: byte-exact",
                r.returncode == 0 and got == want, f"exit {r.returncode}: {tail(r.stderr)}; "
                f"differ: {sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))[:5]}")
        reqs = priv.requests(m0)
        challenges = [e for e in reqs if e["status"] == 401]
        h.note(f"the auth registry saw {len(reqs)} requests for those 7 invocations, {len(challenges)} of them "
               f"answered 401 (a request sent without credentials, then repeated with them): {desc(challenges, 4)}")
        h.check("the auth registry served those requests with basic auth: manifest and ranged blob GETs 2xx, "
                "nothing else but 401 challenges, no invocation failed",
                blob_gets(reqs, blob) and all(200 <= e["status"] < 300 or e["status"] == 401 for e in reqs)
                and any(e["path"].startswith(f"/v2/{REPO}/manifests/") and e["status"] == 200 for e in reqs),
                desc([e for e in reqs if not 200 <= e["status"] < 300 and e["status"] != 401]))

        authfile = os.path.join(T, "containers-auth.json")
        with open(authfile, "w") as f:
            json.dump({"auths": {priv.hostport: {"auth": b64(USER, pw)}}}, f)
        os.chmod(authfile, 0o600)
        r = cli("cat", PLOC, small, *cacert, env=env_of(REGISTRY_AUTH_FILE=authfile), binary=True)
        h.check("credentials from REGISTRY_AUTH_FILE (DOCKER_CONFIG without config.json): cat gives the bytes",
                r.returncode == 0 and r.stdout == small_bytes, f"exit {r.returncode}: {tail(r.stderr)}")
        bad_dc = docker_config("docker-wrong", priv.hostport, USER, wrong)
        r = cli("cat", PLOC, small, *cacert, env=env_of(REGISTRY_AUTH_FILE=authfile, DOCKER_CONFIG=os.path.dirname(bad_dc)),
                binary=True)
        h.check("REGISTRY_AUTH_FILE wins over $DOCKER_CONFIG/config.json (which has a wrong password)",
                r.returncode == 0 and r.stdout == small_bytes, f"exit {r.returncode}: {tail(r.stderr)}")
        home = os.path.join(T, "home")
        os.makedirs(os.path.join(home, ".docker"))
        shutil.copy(dcfg, os.path.join(home, ".docker", "config.json"))
        r = cli("cat", PLOC, small, *cacert, env=env_of(HOME=home, DOCKER_CONFIG=None), binary=True)
        h.check("credentials from ~/.docker/config.json (HOME, no DOCKER_CONFIG): cat gives the bytes",
                r.returncode == 0 and r.stdout == small_bytes, f"exit {r.returncode}: {tail(r.stderr)}")
        other_dc = os.path.join(T, "docker-otherhost", "config.json")
        os.makedirs(os.path.dirname(other_dc))
        with open(other_dc, "w") as f:
            json.dump({"auths": {f"127.0.0.1:{rs.free_port()}": {"auth": b64(USER, pw)}}}, f)
        r = cli("inspect", PLOC, *cacert, env=env_of(DOCKER_CONFIG=os.path.dirname(other_dc)))
        h.check("credentials for another HOST:PORT only: exit 3, one line, 401 (the entry is per host:port)",
                r.returncode == 3 and one_line(r.stderr) and "401" in r.stderr, f"exit {r.returncode}: {r.stderr!r:.400}")
        r = cli("inspect", PLOC, env=env_dc)
        h.check("without --cacert (test CA unknown): non-zero exit, one line about the certificate",
                r.returncode not in (0, None) and one_line(r.stderr) and tls_words(r.stderr),
                f"exit {r.returncode}: {r.stderr!r:.400}")
        r = cli("inspect", PLOC, "--cacert", other_ca["cert"], env=env_dc)
        h.check("with the wrong CA: non-zero exit, one line about the certificate",
                r.returncode not in (0, None) and one_line(r.stderr) and tls_words(r.stderr),
                f"exit {r.returncode}: {r.stderr!r:.400}")

        h.section("oci:// with the bearer-token flow (docker-registry auth.token + a token service)")
        tok = rs.TokenServer(h, rms.make_server_cert(T, ca, "token-service"), ca, users={USER: pw})
        breg = rs.Registry(h, tls=cert, token=tok, data=priv.data, name="registry-bearer")
        h.check("the bearer registry runs (serving the auth registry's storage)", breg.alive(), breg.errors())
        st_, hd, _ = rs.request(f"{breg.base}/v2/{REPO}/manifests/{TAG}", cafile=ca["cert"],
                                headers={"Accept": rs.OCI_MANIFEST})
        h.check("bearer registry: an anonymous manifest GET -> 401 with a Bearer challenge naming the token service",
                st_ == 401 and hd.get("www-authenticate", "").startswith("Bearer ") and tok.realm in hd.get("www-authenticate", ""),
                f"{st_} {hd.get('www-authenticate')}")
        sk = rs.skopeo_inspect_raw(f"{breg.hostport}/{REPO}:{TAG}", sk_env, "--creds", f"{USER}:{pw}", "--cert-dir", certdir)
        h.check("skopeo inspect --raw --creds on the bearer registry: the manifest (skopeo does the token flow)",
                sk.returncode == 0 and rs.ARTIFACT_TYPE in sk.stdout, f"exit {sk.returncode}: {tail(sk.stderr, 300)}")
        BLOC = f"oci://{breg.hostport}/{REPO}:{TAG}"
        BDLOC = f"oci://{breg.hostport}/{REPO}@{mdig}"
        bcfg = docker_config("docker-bearer", breg.hostport, USER, pw)
        env_b = env_of(DOCKER_CONFIG=os.path.dirname(bcfg))
        m0, t0_ = breg.mark(), tok.mark()
        r = cli("cat", BLOC, shard_rel, *cacert, env=env_b, binary=True)
        h.check(f"bearer: cat {BLOC} {shard_rel} == the source (credentials in $DOCKER_CONFIG)",
                r.returncode == 0 and hashlib.sha256(r.stdout).hexdigest() == want[shard_rel],
                f"exit {r.returncode}, {len(r.stdout)} bytes: {tail(r.stderr)}")
        reqs, treqs = breg.requests(m0), tok.requests(t0_)
        h.note(f"bearer cat: {len(reqs)} registry requests ({len([e for e in reqs if e['status'] == 401])} 401), "
               f"{len(treqs)} token requests: {[(e['scope'], e['status']) for e in treqs][:4]}")
        h.check("bearer: the token service was asked with alice's basic auth, service and scope repository:org/model:pull",
                treqs and all(e["user"] == USER and e["status"] == 200 and e["service"] == tok.service
                              and e["scope"] == f"repository:{REPO}:pull" for e in treqs),
                f"{treqs[:4]}")
        h.check("bearer: the token is reused (at most 4 token requests for one cat; registry: ranged blob GETs 206, "
                "nothing but 2xx and 401 challenges)",
                1 <= len(treqs) <= 4 and blob_gets(reqs, blob) and all(e["status"] == 206 for e in blob_gets(reqs, blob))
                and all(200 <= e["status"] < 300 or e["status"] == 401 for e in reqs),
                f"{len(treqs)} token requests; {desc([e for e in reqs if e['status'] not in (200, 206)])}")
        r = cli("verify", BDLOC, *cacert, "--pubkey", pub, env=env_b, timeout=300)
        h.check("bearer: verify by digest --pubkey exits 0", r.returncode == 0, f"exit {r.returncode}: {tail(r.stdout + r.stderr)}")
        bad_b = docker_config("docker-bearer-wrong", breg.hostport, USER, wrong)
        for label, e in (("a wrong password (the token service answers 401)", env_of(DOCKER_CONFIG=os.path.dirname(bad_b))),
                         ("no credentials (the token service answers 401)", env_of())):
            r = cli("inspect", BLOC, *cacert, env=e)
            h.note(f"stderr: {tail(r.stderr, 300)}")
            h.check(f"bearer, {label}: inspect exits 3 with one line naming {BLOC} and 401",
                    r.returncode == 3 and one_line(r.stderr) and BLOC in r.stderr and "401" in r.stderr,
                    f"exit {r.returncode}: {r.stderr!r:.400}")
        bauth = os.path.join(T, "bearer-auth.json")
        with open(bauth, "w") as f:
            json.dump({"auths": {breg.hostport: {"auth": b64(USER, pw)}}}, f)
        mnt = new_mnt("oci-bearer")
        tok.lifetime = 6  # the registry refuses this mount's tokens 6 s after they are issued
        t_mount, tm0 = time.monotonic(), tok.mark()
        rc, log = mount(BDLOC, mnt, "-o", f"cacert={ca['cert']},pubkey={pub},cache_dir=none,prefetch=none",
                        env=env_of(REGISTRY_AUTH_FILE=bauth))
        if h.check(f"bearer: mount {REPO}@sha256:... with REGISTRY_AUTH_FILE: exits 0", rc == 0 and os.path.ismount(mnt),
                   f"exit {rc}: {tail(log)}"):
            res = read_tree(mnt, want, only=lambda rel: rel == small)
            h.check(f"bearer mount: {small} byte-exact", all_ok(res), summary(res))
            time.sleep(max(0.0, t_mount + 8 - time.monotonic()))
            bm0 = breg.mark()
            res = read_tree(mnt, want)
            breqs, treqs = breg.requests(bm0), tok.requests(tm0)
            h.note(f"after the token expired: {len(breqs)} registry requests "
                   f"({len([e for e in breqs if e['status'] == 401])} 401), {len(treqs)} token requests since the mount")
            h.check(f"bearer mount, 8 s later (the token expired after 6 s: the registry answers 401 invalid_token): "
                    f"all {len(want)} files byte-exact (4 concurrent readers), a new token was fetched",
                    all_ok(res) and len(treqs) >= 2 and all(e["status"] == 200 for e in treqs),
                    f"{summary(res)}; {len(treqs)} token requests {[(e['user'], e['status']) for e in treqs][:4]}")
            st, why = stats_of(mnt)
            h.check(f"bearer mount: stats source is {BDLOC}", st is not None and st.get("source") == BDLOC,
                    why or json.dumps({k: st.get(k) for k in ("source", "mirror")})[:400])
            ok, why = responsive(mnt)
            h.check("bearer mount: the daemon is alive", ok, why)
        h.unmount(mnt)
        tok.lifetime = 300
        mnt = new_mnt("oci-bearer-err")
        rc, log = mount(BLOC, mnt, "-o", f"cacert={ca['cert']},pubkey={pub},cache_dir=none",
                        env=env_of(DOCKER_CONFIG=os.path.dirname(bad_b)), timeout=60)
        h.note(f"mount.torshpkg said: {tail(log, 300)}")
        h.check(f"bearer: mount with a wrong password: exit 3, nothing mounted, one line naming {BLOC} and 401",
                rc == 3 and not os.path.ismount(mnt) and one_line(log) and BLOC in log and "401" in log,
                f"exit {rc}: {log!r:.400}")
        h.unmount(mnt)

        h.section("errors: 401 and 404")
        for label, loc, env, args, words in (
                ("a wrong password ($DOCKER_CONFIG)", PLOC, env_of(DOCKER_CONFIG=os.path.dirname(bad_dc)), cacert, ("401",)),
                ("no credentials for the auth registry", PLOC, env_of(), cacert, ("401",)),
                ("a missing tag", f"oci+http://{anon.hostport}/{REPO}:9.9.9", env_of(), (), ("manifest unknown", "404")),
                ("a missing repository", f"oci+http://{anon.hostport}/org/nothing:{TAG}", env_of(), (),
                 ("manifest unknown", "404", "name unknown")),
                ("a missing digest", f"oci+http://{anon.hostport}/{REPO}@sha256:{'0' * 64}", env_of(), (),
                 ("manifest unknown", "404")),
                ("a missing tag over HTTPS with credentials", f"oci://{priv.hostport}/{REPO}:9.9.9", env_dc, cacert,
                 ("manifest unknown", "404"))):
            r = cli("inspect", loc, *args, env=env)
            h.note(f"stderr: {tail(r.stderr, 300)}")
            h.check(f"{label}: inspect exits 3 with one line naming {loc} and {' or '.join(words)}",
                    r.returncode == 3 and one_line(r.stderr) and loc in r.stderr and any(w in r.stderr for w in words),
                    f"exit {r.returncode}: {r.stderr!r:.400}")
        r = cli("cat", f"oci+http://{anon.hostport}/{REPO}:9.9.9", small, binary=True)
        err = r.stderr.decode("utf-8", "replace")
        h.check("a missing tag: cat exits 3 with one line, nothing on stdout",
                r.returncode == 3 and one_line(err) and not r.stdout, f"exit {r.returncode}: {err!r:.400}")

        # ---------------------------------------------------------------------------------------
        h.section("mount.torshpkg oci+http:// (anonymous)")
        cache = os.path.join(T, "cache")
        mnt = new_mnt("oci-http")
        m0 = anon.mark()
        rc, log = mount(LOC, mnt, "-o", f"pubkey={pub},cache_dir={cache},prefetch=none")
        if h.check(f"mount {LOC} MNT -o pubkey=...,cache_dir=DIR,prefetch=none exits 0 and mounts",
                   rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}"):
            reqs = anon.requests(m0)
            gets = blob_gets(reqs, blob)
            sent = sum(e["bytes"] for e in gets)
            h.note(f"mount: {len(reqs)} requests: {desc(reqs, 12)}")
            h.check("the mount resolved the tag once or twice (GET .../manifests/1.0.0 -> 200)",
                    1 <= len([e for e in reqs if e["path"] == f"/v2/{REPO}/manifests/{TAG}" and e["status"] == 200]) <= 2,
                    desc(reqs))
            h.check("the mount read the tail with 1 to 3 ranged blob GETs (206), < 1/8 of the package",
                    1 <= len(gets) <= 3 and all(e["status"] == 206 for e in gets) and sent < size / 8,
                    f"{len(gets)} GETs, {sent} bytes: {desc(gets)}")
            h.check("the mount made at most 6 requests in all", len(reqs) <= 6, desc(reqs, 12))
            h.check("ls of the root lists the model's entries", sorted(os.listdir(mnt)) == sorted(os.listdir(src)),
                    f"{sorted(set(os.listdir(mnt)) ^ set(os.listdir(src)))}")
            m1 = anon.mark()
            try:
                got = open(os.path.join(mnt, small), "rb").read()
            except OSError as e:
                got = str(e).encode()
            reqs = blob_gets(anon.requests(m1), blob)
            h.check(f"lazy: reading {small} returns its bytes and fetches < 1/8 of the package",
                    got == small_bytes and sum(e["bytes"] for e in reqs) < size / 8,
                    f"{got[:80]!r}; {desc(reqs)}")
            res = read_tree(mnt, want)
            h.check(f"all {len(want)} files read back byte-exact (4 concurrent readers)", all_ok(res), summary(res))
            h.check("the mounted tree has the same entries as the source", walk(mnt) == walk(src),
                    f"{sorted(set(walk(mnt)) ^ set(walk(src)))[:5]}")
            st, why = stats_of(mnt)
            h.check(f"stats: source is {LOC}, requests > 0, bytes_fetched > 0",
                    st is not None and st.get("source") == LOC and num(st, "requests") > 0 and num(st, "bytes_fetched") > 0,
                    why or json.dumps({k: st.get(k) for k in ("source", "mirror", "requests", "bytes_fetched")})[:400])
            if st is not None:
                h.note("stats: " + json.dumps({k: st.get(k) for k in ("source", "mirror", "requests", "bytes_fetched",
                                                                      "bytes_from_cache", "retries")}))
        h.unmount(mnt)
        reqs = anon.requests(m0)
        fetched = sum(e["bytes"] for e in blob_gets(reqs, blob))
        h.check("reading everything through the mount fetched the blob about once (< 1.25x its size)",
                0 < fetched < 1.25 * size, f"{fetched} bytes for a {size}-byte package")
        entries = [p for p in glob.glob(os.path.join(cache, "chunks", "*", "*")) if os.path.isfile(p)]
        h.check("cache_dir= holds chunk entries afterwards", len(entries) > 0, f"{len(entries)} entries in {cache}")

        h.section("mount.torshpkg oci:// (HTTPS, basic auth)")
        mnt = new_mnt("oci-https-digest")
        m0 = priv.mark()
        rc, log = mount(PDLOC, mnt, "-o", f"cacert={ca['cert']},pubkey={pub},cache_dir=none",
                        env=env_of(REGISTRY_AUTH_FILE=authfile))
        if h.check(f"mount {REPO}@sha256:... -o cacert=,pubkey=,cache_dir=none with REGISTRY_AUTH_FILE: exits 0",
                   rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}"):
            res = read_tree(mnt, want, only=lambda rel: rel in (small, shard_rel))
            h.check(f"{small} and {shard_rel} byte-exact", all_ok(res), summary(res))
            st, why = stats_of(mnt)
            h.check(f"stats: source is {PDLOC}", st is not None and st.get("source") == PDLOC,
                    why or json.dumps({k: st.get(k) for k in ("source", "mirror")})[:400])
            cmdlines = []
            for pid in mount_procs(mnt):
                try:
                    cmdlines.append(open(f"/proc/{pid}/cmdline", "rb").read())
                    captured.append((f"cmdline {pid}", cmdlines[-1]))
                except OSError:
                    pass
            h.check("the daemon's command line holds no password", not any(leaked(c) for c in cmdlines),
                    f"{[leaked(c) for c in cmdlines]}")
        h.unmount(mnt)
        mnt = new_mnt("oci-https-tag")
        rc, log = mount(PLOC, mnt, "-o", f"cacert={ca['cert']},pubkey={pub},cache_dir=none", env=env_dc)
        if h.check(f"mount {PLOC} with $DOCKER_CONFIG credentials: exits 0", rc == 0 and os.path.ismount(mnt),
                   f"exit {rc}: {tail(log)}"):
            res = read_tree(mnt, want, only=lambda rel: rel in (small, shard_rel))
            h.check(f"{small} and {shard_rel} byte-exact", all_ok(res), summary(res))
            stats_of(mnt)
        h.unmount(mnt)

        for label, loc, e, opts, words in (
                ("a wrong password (401)", PLOC, env_of(DOCKER_CONFIG=os.path.dirname(bad_dc)), f"cacert={ca['cert']}", ("401",)),
                ("no credentials (401)", PLOC, env_of(), f"cacert={ca['cert']}", ("401",)),
                ("a missing tag (404)", f"oci+http://{anon.hostport}/{REPO}:9.9.9", env_of(), "", ("manifest unknown", "404"))):
            mnt = new_mnt("oci-err")
            t0 = time.monotonic()
            o = f"pubkey={pub},cache_dir=none" + (f",{opts}" if opts else "")
            rc, log = mount(loc, mnt, "-o", o, env=e, timeout=60)
            took = time.monotonic() - t0
            h.note(f"mount.torshpkg said: {tail(log, 300)}")
            h.check(f"mount with {label}: exit 3, nothing mounted, one line naming {loc} and {' or '.join(words)}",
                    rc == 3 and not os.path.ismount(mnt) and one_line(log) and loc in log and any(w in log for w in words),
                    f"exit {rc} after {took:.1f} s: {log!r:.400}")
            h.unmount(mnt)

        # ---------------------------------------------------------------------------------------
        h.section("the blob deleted from the registry mid-mount")
        dreg = rs.Registry(h, name="registry-delete")
        rs.push(dreg.base, REPO, TAG, pkg, name="model", version=TAG, root=root)
        DEL = f"oci+http://{dreg.hostport}/{REPO}:{TAG}"
        mnt = new_mnt("oci-deleted")
        rc, log = mount(DEL, mnt, "-o", f"pubkey={pub},cache_dir=none,prefetch=none")
        if h.check("delete: mount exits 0", rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}"):
            res = read_tree(mnt, want, only=lambda rel: rel == small)
            h.check(f"delete: {small} reads back before the deletion", all_ok(res), summary(res))
            bp = dreg.blob_path(blob)
            try:
                os.unlink(bp)
                removed = True
            except OSError as e:
                removed = False
                h.check("delete: removed the blob's data file", False, str(e))
            if removed:
                st_, _, _ = rs.request(f"{dreg.base}/v2/{REPO}/blobs/{blob}", headers={"Range": "bytes=0-99"})
                h.note(f"the registry now answers a Range GET of the blob with {st_}")
                m1 = dreg.mark()
                res = read_tree(mnt, want)
                wrong_ = [r_ for r_, v in res.items() if v[0] in ("wrong", "hung")]
                h.check("delete: no read returns wrong bytes or hangs (each file is either exact or fails)",
                        not wrong_, summary(res))
                shard_res = {r_: v for r_, v in res.items() if r_.endswith(".safetensors")}
                h.check("delete: reading any safetensors shard (not read before) fails with EIO",
                        shard_res and all(v[0] == "error" and v[1] == errno.EIO for v in shard_res.values()),
                        summary(shard_res))
                ok, why = responsive(mnt)
                h.check("delete: the daemon is alive and answers", ok, why)
                reqs = dreg.requests(m1)
                h.note(f"after the deletion the registry answered {sorted({e['status'] for e in reqs})} "
                       f"to {len(reqs)} requests")
                st, why = stats_of(mnt)
                h.check("delete: stats still readable", st is not None, why)
        h.unmount(mnt)

        # ---------------------------------------------------------------------------------------
        h.section("torshpkg push, pull, tags (the product's own client)")
        PUSHED = f"oci+http://{anon.hostport}/org/pushed:{TAG}"
        r = cli("push", pkg, PUSHED)
        h.check(f"torshpkg push PKG {PUSHED}: exit 0, uploaded", r.returncode == 0 and "uploaded" in r.stdout,
                f"exit {r.returncode}: {tail(r.stderr or r.stdout)}")
        r = cli("push", pkg, f"oci+http://{anon.hostport}/org/pushed:latest")
        h.check("push of the same package under another tag: the blob is skipped",
                r.returncode == 0 and "already there" in r.stdout, f"exit {r.returncode}: {tail(r.stderr or r.stdout)}")
        sk = rs.skopeo_inspect_raw(f"{anon.hostport}/org/pushed:{TAG}", sk_env, "--tls-verify=false")
        try:
            man = json.loads(sk.stdout) if sk.returncode == 0 else {}
        except ValueError:
            man = {}
        lay = (man.get("layers") or [{}])[0]
        h.check("skopeo inspect --raw: an OCI 1.1 manifest, artifactType ours, the .tpkg as the layer, root annotated",
                man.get("mediaType") == "application/vnd.oci.image.manifest.v1+json"
                and man.get("artifactType") == "application/vnd.torshpkg.package.v1"
                and lay.get("mediaType") == "application/vnd.torshpkg.package.v1.tpkg" and lay.get("digest") == blob
                and lay.get("size") == size and (man.get("annotations") or {}).get("dev.torshpkg.root.sha256") == root
                and (man.get("annotations") or {}).get("org.opencontainers.image.version") == TAG,
                f"exit {sk.returncode}: {tail(sk.stdout + sk.stderr, 500)}")
        r = cli("tags", f"oci+http://{anon.hostport}/org/pushed")
        h.check("torshpkg tags lists 1.0.0 and latest", r.returncode == 0 and set(r.stdout.split()) == {TAG, "latest"},
                f"exit {r.returncode}: {tail(r.stdout + r.stderr)}")
        pulled = os.path.join(T, "pulled.tpkg")
        r = cli("pull", PUSHED, "-o", pulled)
        same = r.returncode == 0 and os.path.exists(pulled) and open(pulled, "rb").read() == pkg_bytes
        h.check("torshpkg pull -o FILE: byte-exact", same, f"exit {r.returncode}: {tail(r.stderr or r.stdout)}")
        r = cli("pull", PUSHED, "-o", pulled)
        h.check("pull onto an existing file without --force: exit 2", r.returncode == 2, f"exit {r.returncode}")
        mnt = new_mnt("pushed")
        rc, log = mount(PUSHED, mnt, "-o", f"pubkey={pub}", "-o", "cache_dir=none")
        if h.check("mount of what torshpkg pushed: exit 0", rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}"):
            res = read_tree(mnt, want)
            h.check("mount of what torshpkg pushed: every file byte-exact", all_ok(res), summary(res))
        h.unmount(mnt)
        PPUSH = f"oci://{priv.hostport}/org/pushed:{TAG}"
        r = cli("push", pkg, PPUSH, *cacert, env=env_of())
        h.check("push to the auth registry without credentials: exit 3, one line naming 401",
                r.returncode == 3 and "401" in r.stderr and len(r.stderr.strip().splitlines()) == 1,
                f"exit {r.returncode}: {tail(r.stderr)}")
        bad = docker_config("docker-bad-push", priv.hostport, USER, pw + "x")
        r = cli("push", pkg, PPUSH, *cacert, env=env_of(DOCKER_CONFIG=os.path.dirname(bad)))
        h.check("push with a wrong password: exit 3, one line", r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1,
                f"exit {r.returncode}: {tail(r.stderr)}")
        r = cli("push", pkg, PPUSH, *cacert, env=env_dc)
        h.check("push to the auth registry with credentials: exit 0", r.returncode == 0, f"exit {r.returncode}: {tail(r.stderr)}")
        r = cli("cat", PPUSH, small, *cacert, env=env_dc, binary=True)
        h.check("cat of what was pushed with credentials: byte-exact", r.returncode == 0 and r.stdout == small_bytes,
                f"exit {r.returncode}")

        h.section("secrets")
        for i, t in enumerate(tok.issued):
            secret_values[f"bearer token #{i + 1}"] = t
        hits = [(lab, leaked(text)) for lab, text in captured if leaked(text)]
        h.check(f"no password (nor its base64 auth, nor a bearer token) in any output ({len(captured)} stdout/stderr/log/stats captures)",
                not hits, "; ".join(f"{lab}: {names}" for lab, names in hits[:6]))

        h.section("servers")
        h.check("the registries are still running", anon.alive() and priv.alive() and dreg.alive() and breg.alive(),
                anon.errors() + priv.errors() + dreg.errors() + breg.errors())
        ports = [anon.port, priv.port, dreg.port, breg.port, tok.port]
        for x in (dreg, breg, tok, priv, anon):
            x.stop()
        open_ports = [p for p in ports if rs.port_open(p)]
        h.check("after stop() nothing listens on their ports", not open_ports, f"{open_ports}")


if __name__ == "__main__":
    main()
