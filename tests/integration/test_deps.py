#!/usr/bin/env python3
"""Dependencies: `torshpkg resolve PKG --registry oci+http://HOST:PORT/ORG [-o LOCK]`, the lock file,
`torshpkg pull --lock LOCK -o DIR` and `mount.torshpkg PKG MNT -o deps[=LOCK]`, against Debian's
docker-registry (registry_servers.Registry, anonymous plain HTTP on 127.0.0.1) holding small packages
made with `pack --depends NAME@RANGE` and pushed with `torshpkg push`.

Dependency NAME lives at ORG/NAME, its tags are its versions (non-semver tags such as `latest` are
ignored; a tag `1.0.0_build5` is version 1.0.0+build5). Covered:
  1. a diamond (app -> a@^1, b@^1; a -> c@^1.1; b -> c@">=1.0.0 <1.3.0") -> a 1.1.0, b 1.0.0, c 1.2.0,
     the lock's fields, sources by the registry's manifest digests (HTTP and skopeo);
  2. backtracking (x 2.0.0 -> y@^2 against app2's y@^1 -> x 1.0.0, y 1.0.0);
  3. a conflict (exit 8, both ranges and both requirers on one line, no lock written or changed);
  4. a missing package (direct and transitive), 5. no satisfying version (the versions listed);
  6. pre-releases (only when a range names one);
  7. pull --lock: byte-exact, idempotent, an existing different file (exit 2, --force), a tag moved
     after locking (the locked bytes still), a lock with a wrong root digest (exit 5);
  8. mount -o deps / -o deps=FILE: MNT/.deps/NAME byte-exact, user.torshpkg.version, the package's
     own files, clean unmount; a lock for another package and a tampered lock refused;
  plus names with '/' (pull: '_', mount: '+') and build metadata in a tag.
Needs root, /dev/fuse, docker-registry and skopeo (scripts/install-deps). HOME, DOCKER_CONFIG,
XDG_* point at temp dirs, so no real registry config or cache is used.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tpkgtest import Harness, inspect_json, tail, walk  # noqa: E402
from test_remote import all_ok, file_digests, read_tree, summary  # noqa: E402
import registry_servers as rs  # noqa: E402

ORG = "org"
PREFIX = "torshpkg: cannot resolve dependencies: "
CRED_VARS = ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "DOCKER_AUTH_CONFIG", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME",
             "XDG_CACHE_HOME", "CONTAINERS_REGISTRIES_CONF", "CONTAINERS_AUTH_FILE")


def fill(seed: str, n: int) -> bytes:
    out = bytearray()
    k = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}/{k}".encode()).digest()
        k += 1
    return bytes(out[:n])


def err_lines(text: str) -> list[str]:
    return [ln for ln in (text or "").splitlines() if ln.strip()]


def main():
    for k in CRED_VARS:
        os.environ.pop(k, None)

    with Harness("deps", deadline=840) as h:
        T = h.tmp
        for d in ("home", "docker", "xdg-runtime", "xdg-config", "xdg-cache"):
            os.makedirs(os.path.join(T, "env", d))
        os.environ.update({"HOME": os.path.join(T, "env", "home"), "DOCKER_CONFIG": os.path.join(T, "env", "docker"),
                           "XDG_RUNTIME_DIR": os.path.join(T, "env", "xdg-runtime"),
                           "XDG_CONFIG_HOME": os.path.join(T, "env", "xdg-config"),
                           "XDG_CACHE_HOME": os.path.join(T, "env", "xdg-cache")})
        for label, path in (("docker-registry", rs.DOCKER_REGISTRY), ("skopeo", rs.SKOPEO)):
            if not h.check(f"{label} is installed ({path})", os.access(path, os.X_OK), "scripts/install-deps"):
                return

        # -- helpers --------------------------------------------------------------------------------
        n_mnt = [0]

        def new_dir(label: str) -> str:
            n_mnt[0] += 1
            p = os.path.join(T, f"{n_mnt[0]:02d}-{label}")
            os.makedirs(p)
            return p

        def bounded(fn, timeout: float = 30):
            """fn() in a thread; (result, None) or (None, why). A hang aborts our FUSE connections."""
            box = {}

            def run():
                try:
                    box["v"] = fn()
                except Exception as e:  # noqa: BLE001
                    box["e"] = e
            t = threading.Thread(target=run, daemon=True)
            t.start()
            t.join(timeout)
            if t.is_alive():
                h.abort_mounts("a call on the mount hung")
                t.join(15)
                return None, f"hung for {timeout:.0f} s"
            if "e" in box:
                return None, f"{type(box['e']).__name__}: {box['e']}"
            return box.get("v"), None

        srcs: dict[tuple[str, str], str] = {}      # (name, version or variant) -> source dir
        pkgs: dict[tuple[str, str], str] = {}      # -> .tpkg
        roots: dict[tuple[str, str], str] = {}     # -> root digest hex (inspect --json)

        def make_pkg(name: str, version: str, deps=(), variant: str = "", key: str | None = None) -> str:
            """A small dir (text, a 300 KiB binary, a nested dir, an empty file) packed as NAME@VERSION."""
            key = key or version
            safe = name.replace("/", "_")
            d = os.path.join(T, "src", f"{safe}-{key}")
            os.makedirs(os.path.join(d, "data", "nested"))
            with open(os.path.join(d, "README.txt"), "w") as f:
                f.write(f"{name} {version} {variant}\n")
            with open(os.path.join(d, "data", "weights.bin"), "wb") as f:
                f.write(fill(f"{name}@{version}#{variant}", 300 * 1024 + 7))
            with open(os.path.join(d, "data", "config.json"), "w") as f:
                json.dump({"name": name, "version": version, "variant": variant, "deps": list(deps)}, f)
            with open(os.path.join(d, "data", "nested", "vocab.txt"), "w") as f:
                f.write("\n".join(f"{name}-tok{i}" for i in range(500)) + "\n")
            open(os.path.join(d, "data", "empty"), "wb").close()
            out = os.path.join(T, "pkgs", f"{safe}-{key}.tpkg")
            os.makedirs(os.path.dirname(out), exist_ok=True)
            args = ["pack", d, "-o", out, "--name", name, "--version", version, "-q"]
            for dep in deps:
                args += ["--depends", dep]
            r = h.tpkg(*args)
            if r.returncode != 0:
                h.check(f"pack {name} {version} {' '.join(deps)}", False, f"exit {r.returncode}: {tail(r.stderr)}")
                raise RuntimeError(f"cannot pack {name} {version}")
            j = inspect_json(h, out) or {}
            srcs[(name, key)], pkgs[(name, key)], roots[(name, key)] = d, out, j.get("root_sha256", "")
            return out

        def push(pkg: str, name: str, tag: str) -> str:
            """torshpkg push; returns the manifest digest the registry gives for the tag."""
            ref = f"oci+http://{reg.hostport}/{ORG}/{name}:{tag}"
            r = h.tpkg("push", pkg, ref)
            if r.returncode != 0:
                h.check(f"push {os.path.basename(pkg)} {ref}", False, f"exit {r.returncode}: {tail(r.stderr)}")
                raise RuntimeError(f"cannot push {ref}")
            return manifest_digest(name, tag)

        def manifest_digest(name: str, tag: str) -> str:
            st, hd, body = rs.request(f"{reg.base}/v2/{ORG}/{name}/manifests/{tag}",
                                      headers={"Accept": rs.OCI_MANIFEST})
            dig = hd.get("docker-content-digest", "")
            if st != 200 or dig != "sha256:" + hashlib.sha256(body).hexdigest():
                raise RuntimeError(f"GET /v2/{ORG}/{name}/manifests/{tag}: {st} {dig} {body[:200]!r}")
            return dig

        def resolve(pkg: str, *extra, cwd=None):
            return h.tpkg("resolve", pkg, "--registry", REGISTRY, *extra, cwd=cwd)

        def load_lock(path: str):
            try:
                with open(path) as f:
                    return json.load(f), None
            except (OSError, ValueError) as e:
                return None, str(e)

        def by_name(lock) -> dict:
            return {p.get("name"): p for p in (lock or {}).get("packages", []) if isinstance(p, dict)}

        def printed(stdout: str, name: str, version: str) -> bool:
            return any(ln.split()[:2] == [name, version] for ln in stdout.splitlines())

        def check_resolved(label: str, r, lock_path: str, want: dict[str, str]):
            """exit 0, a lock with exactly `want` {name: version}, a "NAME VERSION" line for each."""
            lock, why = load_lock(lock_path)
            got = {n: p.get("version") for n, p in by_name(lock).items()}
            h.check(f"{label}: resolve exits 0, the lock has {', '.join(f'{n} {v}' for n, v in sorted(want.items()))}",
                    r.returncode == 0 and got == want,
                    f"exit {r.returncode}: {tail(r.stderr)}; lock {got or why}")
            h.check(f"{label}: resolve prints a line 'NAME VERSION ...' per locked package",
                    r.returncode == 0 and all(printed(r.stdout, n, v) for n, v in want.items()), tail(r.stdout))
            return lock

        def check_failure(label: str, r, lock_path: str, before: bytes | None, words: list[str],
                          absent: list[str] = ()):
            """exit 8, one stderr line with PREFIX naming every word, lock not written/changed."""
            lines = err_lines(r.stderr)
            line = lines[0] if lines else ""
            missing = [w for w in words if w not in line]
            h.check(f"{label}: exit 8, one line on stderr starting '{PREFIX.strip()}'",
                    r.returncode == 8 and len(lines) == 1 and line.startswith(PREFIX),
                    f"exit {r.returncode}: {r.stderr!r:.600}")
            h.check(f"{label}: the line names {', '.join(repr(w) for w in words)}", line and not missing,
                    f"missing {missing} in {line!r}")
            bad = [w for w in absent if re.search(w, line)]
            if absent:
                h.check(f"{label}: the line does not name {', '.join(absent)}", not bad, line)
            if before is None:
                h.check(f"{label}: no lock file written ({os.path.basename(lock_path)})",
                        not os.path.exists(lock_path), "it exists")
            else:
                now = open(lock_path, "rb").read() if os.path.exists(lock_path) else None
                h.check(f"{label}: the existing lock file is unchanged", now == before, f"{now!r:.200}")
            left = sorted(os.listdir(os.path.dirname(lock_path)))
            want_left = [os.path.basename(lock_path)] if before is not None else []
            h.check(f"{label}: nothing else left in the lock's directory", [x for x in left if not x.endswith(".tpkg")]
                    == want_left, f"{left}")
            return line

        # -- packages and the registry -----------------------------------------------------------------
        h.section("packages, registry, push")
        reg = rs.Registry(h, name="registry")
        REGISTRY = f"oci+http://{reg.hostport}/{ORG}"
        h.check("docker-registry runs (anonymous, plain HTTP)", reg.alive(), reg.errors())
        h.note(f"registry {reg.base}, data {reg.data}")
        digests: dict[tuple[str, str], str] = {}
        pushed = []
        try:
            table = [
                # (name, version, tag, deps)
                ("c", "1.0.0", "1.0.0", []), ("c", "1.1.0", "1.1.0", []), ("c", "1.2.0", "1.2.0", []),
                ("c", "1.3.0", "1.3.0", []), ("c", "2.0.0", "2.0.0", []), ("c", "1.4.0-rc.1", "1.4.0-rc.1", []),
                ("a", "1.0.0", "1.0.0", ["c@^1.1"]), ("a", "1.1.0", "1.1.0", ["c@^1.1"]),
                ("b", "1.0.0", "1.0.0", ["c@>=1.0.0 <1.3.0"]),
                ("x", "1.0.0", "1.0.0", ["y@^1"]), ("x", "2.0.0", "2.0.0", ["y@^2"]),
                ("y", "1.0.0", "1.0.0", []), ("y", "2.0.0", "2.0.0", []),
                ("d", "1.0.0", "1.0.0", ["c@^2.0.0"]),
                ("m", "1.0.0", "1.0.0", ["ghost@^1.0.0"]),
                ("tools/tok", "1.0.0", "1.0.0", []), ("tools/tok", "1.1.0-beta.1", "1.1.0-beta.1", []),
                ("e", "0.9.0", "0.9.0", []), ("e", "1.0.0+build5", "1.0.0_build5", []),
            ]
            for name, version, tag, deps in table:
                p = make_pkg(name, version, deps)
                digests[(name, version)] = push(p, name, tag)
                pushed.append(f"{name}:{tag}")
            digests[("c", "latest")] = push(pkgs[("c", "2.0.0")], "c", "latest")
            pushed.append("c:latest")
        except RuntimeError as e:
            h.check("pack and push every dependency", False, str(e))
            return
        h.check(f"pack --depends and push {len(pushed)} packages (c has a 'latest' tag too)",
                len(pushed) == len(table) + 1, f"{pushed}")
        st, _, body = rs.request(f"{reg.base}/v2/{ORG}/c/tags/list")
        try:
            ctags = sorted(json.loads(body).get("tags") or [])
        except ValueError:
            ctags = []
        h.check("the registry lists c's tags (1.0.0 1.1.0 1.2.0 1.3.0 1.4.0-rc.1 2.0.0 latest)",
                st == 200 and ctags == sorted(["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0-rc.1", "2.0.0", "latest"]),
                f"{st} {ctags}")
        j = inspect_json(h, pkgs[("a", "1.1.0")]) or {}
        deps_a = (j.get("manifest") or {}).get("dependencies")
        h.check("inspect --json a 1.1.0: the manifest has the dependency c ^1.1",
                isinstance(deps_a, list) and any(isinstance(x, dict) and x.get("name") == "c"
                                                 and x.get("range") == "^1.1" for x in deps_a), f"{deps_a}")
        # the registry's digests are what skopeo sees too
        sk_env = dict(os.environ, REGISTRY_AUTH_FILE=os.path.join(T, "nowhere", "auth.json"))
        sk = rs.skopeo_inspect_raw(f"{reg.hostport}/{ORG}/c:1.2.0", sk_env, "--tls-verify=false")
        raw = sk.stdout.encode()
        sk_digests = {"sha256:" + hashlib.sha256(raw).hexdigest(), "sha256:" + hashlib.sha256(raw.rstrip(b"\n")).hexdigest()}
        h.check("skopeo inspect --raw org/c:1.2.0: the manifest whose digest the registry gives",
                sk.returncode == 0 and digests[("c", "1.2.0")] in sk_digests,
                f"exit {sk.returncode}: {tail(sk.stderr, 300)}")

        apps = {}
        for app, deps in (("app", ["a@^1", "b@^1"]), ("app2", ["x@*", "y@^1"]), ("app3", ["a@^1", "d@^1"]),
                          ("app4", ["nothere@^1.0.0"]), ("app4b", ["m@^1"]), ("app5", ["c@^3"]),
                          ("app6", ["c@^1.1"]), ("app6b", ["c@>=1.4.0-rc.0 <1.5.0"]),
                          ("appx", ["tools/tok@^1.0.0", "e@^1.0.0"])):
            d = new_dir(app)
            p = make_pkg(app, "1.0.0", deps)
            shutil.copy(p, os.path.join(d, f"{app}.tpkg"))
            apps[app] = os.path.join(d, f"{app}.tpkg")
        h.check("pack the root packages (app, app2, ... with --depends)", all(roots[(a, "1.0.0")] for a in apps),
                f"{[a for a in apps if not roots[(a, '1.0.0')]]}")

        # -- 1. diamond ----------------------------------------------------------------------------------
        h.section("1. diamond: app -> a@^1, b@^1; a -> c@^1.1; b -> c@'>=1.0.0 <1.3.0'")
        app_dir = os.path.dirname(apps["app"])
        default_lock = os.path.join(app_dir, "torshpkg.lock")
        r = resolve(apps["app"], cwd=app_dir)
        lock = check_resolved("diamond (no -o: ./torshpkg.lock)", r, default_lock, {"a": "1.1.0", "b": "1.0.0", "c": "1.2.0"})
        P = by_name(lock)
        h.check("diamond: lockfile_version 1, root {name app, version 1.0.0, root_sha256 of app.tpkg}, registry",
                lock is not None and lock.get("lockfile_version") == 1
                and lock.get("root") == {"name": "app", "version": "1.0.0", "root_sha256": roots[("app", "1.0.0")]}
                and lock.get("registry") == REGISTRY,
                f"{json.dumps({k: v for k, v in (lock or {}).items() if k != 'packages'})[:400]}")
        h.check("diamond: packages sorted by name",
                lock is not None and [p.get("name") for p in lock.get("packages", [])] == ["a", "b", "c"],
                f"{[p.get('name') for p in (lock or {}).get('packages', [])]}")
        bad = [n for n, v in (("a", "1.1.0"), ("b", "1.0.0"), ("c", "1.2.0"))
               if P.get(n, {}).get("root_sha256") != roots[(n, v)]]
        h.check("diamond: each package's root_sha256 is the root digest of what was packed (inspect --json)",
                P and not bad, f"wrong for {bad}: {[(n, P.get(n, {}).get('root_sha256')) for n in bad]}")
        want_src = {n: f"{REGISTRY}/{n}@{digests[(n, v)]}" for n, v in (("a", "1.1.0"), ("b", "1.0.0"), ("c", "1.2.0"))}
        got_src = {n: P.get(n, {}).get("source") for n in want_src}
        h.check("diamond: each source is oci+http://HOST:PORT/org/NAME@sha256:<the registry's Docker-Content-Digest "
                "for the tag (= skopeo's)>", got_src == want_src, f"got {got_src}, want {want_src}")
        h.check("diamond: requires: a [c ^1.1], b [c '>=1.0.0 <1.3.0'], c []",
                P.get("a", {}).get("requires") == [{"name": "c", "range": "^1.1"}]
                and P.get("b", {}).get("requires") == [{"name": "c", "range": ">=1.0.0 <1.3.0"}]
                and P.get("c", {}).get("requires") == [],
                f"{[(n, P.get(n, {}).get('requires')) for n in 'abc']}")
        h.check("diamond: required_by: a [app@1.0.0], b [app@1.0.0], c [a@1.1.0, b@1.0.0]",
                P.get("a", {}).get("required_by") == ["app@1.0.0"] and P.get("b", {}).get("required_by") == ["app@1.0.0"]
                and sorted(P.get("c", {}).get("required_by") or []) == ["a@1.1.0", "b@1.0.0"],
                f"{[(n, P.get(n, {}).get('required_by')) for n in 'abc']}")
        h.check("diamond: the 'latest' tag is ignored silently (no warning on stderr)",
                r.returncode == 0 and "latest" not in r.stderr, tail(r.stderr))
        diamond_text = open(default_lock, "rb").read() if os.path.exists(default_lock) else b""
        # -o over an existing file replaces it; the root given as a location in the registry
        locks = new_dir("locks")
        dl = os.path.join(locks, "diamond.lock")
        with open(dl, "w") as f:
            f.write("not a lock\n")
        r = resolve(apps["app"], "-o", dl)
        lock2, why = load_lock(dl)
        h.check("diamond -o over an existing file: exit 0, replaced by the same lock",
                r.returncode == 0 and lock2 == lock, f"exit {r.returncode}: {tail(r.stderr)}; {why}")
        try:
            push(apps["app"], "app", "1.0.0")
            rl = os.path.join(locks, "diamond-remote.lock")
            r = resolve(f"oci+http://{reg.hostport}/{ORG}/app:1.0.0", "-o", rl)
            lock3, why = load_lock(rl)
            h.check("diamond with the root given as oci+http://.../org/app:1.0.0: the same lock",
                    r.returncode == 0 and lock3 == lock, f"exit {r.returncode}: {tail(r.stderr)}; {why}; "
                    f"{json.dumps(lock3)[:300] if lock3 != lock else ''}")
        except RuntimeError as e:
            h.check("push app for the remote-root resolve", False, str(e))

        # -- 2. backtracking -----------------------------------------------------------------------------
        h.section("2. backtracking: app2 -> x@*, y@^1; x 2.0.0 -> y@^2, x 1.0.0 -> y@^1")
        l2 = os.path.join(locks, "app2.lock")
        r = resolve(apps["app2"], "-o", l2)
        lock = check_resolved("backtracking", r, l2, {"x": "1.0.0", "y": "1.0.0"})
        P = by_name(lock)
        h.check("backtracking: required_by y == [app2@1.0.0, x@1.0.0], sources and roots of x 1.0.0 and y 1.0.0",
                sorted(P.get("y", {}).get("required_by") or []) == ["app2@1.0.0", "x@1.0.0"]
                and P.get("x", {}).get("source") == f"{REGISTRY}/x@{digests[('x', '1.0.0')]}"
                and P.get("y", {}).get("source") == f"{REGISTRY}/y@{digests[('y', '1.0.0')]}"
                and P.get("x", {}).get("root_sha256") == roots[("x", "1.0.0")]
                and P.get("y", {}).get("root_sha256") == roots[("y", "1.0.0")], f"{json.dumps(P)[:600]}")

        # -- 3. conflict ---------------------------------------------------------------------------------
        h.section("3. conflict: app3 -> a@^1, d@^1; a 1.x -> c@^1.1, d 1.0.0 -> c@^2.0.0")
        fdir = new_dir("fail-conflict")
        fl = os.path.join(fdir, "conflict.lock")
        with open(fl, "wb") as f:
            f.write(b"sentinel: must not change\n")
        r = resolve(apps["app3"], "-o", fl)
        line = check_failure("conflict", r, fl, b"sentinel: must not change\n", ["c", "^1.1", "^2.0.0", "d@1.0.0"])
        h.check("conflict: the line names a requirer a@1.x of ^1.1", re.search(r"\ba@1\.[01]\.0\b", line), line)
        fdir = new_dir("fail-conflict-new")
        r = resolve(apps["app3"], "-o", os.path.join(fdir, "new.lock"))
        check_failure("conflict (-o a new path)", r, os.path.join(fdir, "new.lock"), None, ["c", "^1.1", "^2.0.0"])

        # -- 4. missing ----------------------------------------------------------------------------------
        h.section("4. a package missing from the registry")
        fdir = os.path.dirname(apps["app4"])
        r = resolve(apps["app4"], cwd=fdir)
        check_failure("missing (app4 -> nothere@^1.0.0, default lock path)", r, os.path.join(fdir, "torshpkg.lock"), None,
                      ["nothere", "app4@1.0.0"])
        fdir = new_dir("fail-missing-transitive")
        r = resolve(apps["app4b"], "-o", os.path.join(fdir, "x.lock"))
        check_failure("missing transitive (app4b -> m@^1 -> ghost@^1.0.0)", r, os.path.join(fdir, "x.lock"), None,
                      ["ghost", "m@1.0.0"])

        # -- 5. no satisfying version --------------------------------------------------------------------
        h.section("5. no version satisfies a range (app5 -> c@^3)")
        fdir = new_dir("fail-range")
        r = resolve(apps["app5"], "-o", os.path.join(fdir, "x.lock"))
        check_failure("no version (c@^3)", r, os.path.join(fdir, "x.lock"), None,
                      ["c", "^3", "app5@1.0.0", "1.0.0", "1.1.0", "1.2.0", "1.3.0", "2.0.0"], absent=[r"\blatest\b"])

        # -- 6. pre-releases -----------------------------------------------------------------------------
        h.section("6. pre-releases (c 1.4.0-rc.1 is in the registry)")
        l6 = os.path.join(locks, "app6.lock")
        r = resolve(apps["app6"], "-o", l6)
        check_resolved("pre-release: app6 -> c@^1.1 picks the highest release", r, l6, {"c": "1.3.0"})
        l6b = os.path.join(locks, "app6b.lock")
        r = resolve(apps["app6b"], "-o", l6b)
        lock = check_resolved("pre-release: app6b -> c@'>=1.4.0-rc.0 <1.5.0' picks 1.4.0-rc.1", r, l6b,
                              {"c": "1.4.0-rc.1"})
        h.check("pre-release: the lock's source is the manifest of tag 1.4.0-rc.1",
                by_name(lock).get("c", {}).get("source") == f"{REGISTRY}/c@{digests[('c', '1.4.0-rc.1')]}",
                f"{by_name(lock).get('c', {}).get('source')}")

        # -- names with '/', build metadata ------------------------------------------------------------------
        h.section("names with '/' and build metadata in a tag (appx -> tools/tok@^1.0.0, e@^1.0.0)")
        lx = os.path.join(os.path.dirname(apps["appx"]), "torshpkg.lock")
        r = resolve(apps["appx"], "-o", lx)
        lock = check_resolved("appx: tools/tok 1.0.0 (beta ignored), e 1.0.0+build5 (tag 1.0.0_build5)", r, lx,
                              {"tools/tok": "1.0.0", "e": "1.0.0+build5"})
        P = by_name(lock)
        h.check("appx: sources org/tools/tok@sha256:... and org/e@sha256:... (tag 1.0.0_build5)",
                P.get("tools/tok", {}).get("source") == f"{REGISTRY}/tools/tok@{digests[('tools/tok', '1.0.0')]}"
                and P.get("e", {}).get("source") == f"{REGISTRY}/e@{digests[('e', '1.0.0+build5')]}",
                f"{[(n, p.get('source')) for n, p in P.items()]}")

        # -- 7. pull --lock ------------------------------------------------------------------------------
        h.section("7. pull --lock")
        diamond = {"a": "1.1.0", "b": "1.0.0", "c": "1.2.0"}
        files = {f"{n}-{v}.tpkg": pkgs[(n, v)] for n, v in diamond.items()}

        def cmp_dir(d: str, want: dict[str, str]) -> list[str]:
            have = sorted(os.listdir(d)) if os.path.isdir(d) else []
            bad = [] if have == sorted(want) else [f"listing {have}"]
            for fn, orig in want.items():
                p = os.path.join(d, fn)
                if not os.path.isfile(p) or open(p, "rb").read() != open(orig, "rb").read():
                    bad.append(fn)
            return bad

        pd = os.path.join(new_dir("pull"), "deps")
        r = h.tpkg("pull", "--lock", dl, "-o", pd)
        bad = cmp_dir(pd, files)
        h.check("pull --lock diamond.lock -o DIR: exit 0, DIR has exactly a-1.1.0.tpkg b-1.0.0.tpkg c-1.2.0.tpkg, "
                "each byte-exact (cmp with the packed file)", r.returncode == 0 and not bad,
                f"exit {r.returncode}: {tail(r.stderr)}; bad {bad}")
        before = {fn: (os.stat(os.path.join(pd, fn)).st_ino, os.stat(os.path.join(pd, fn)).st_mtime_ns)
                  for fn in files if os.path.exists(os.path.join(pd, fn))}
        m0 = reg.mark()
        r = h.tpkg("pull", "--lock", dl, "-o", pd)
        after = {fn: (os.stat(os.path.join(pd, fn)).st_ino, os.stat(os.path.join(pd, fn)).st_mtime_ns)
                 for fn in files if os.path.exists(os.path.join(pd, fn))}
        blob_gets = [e for e in reg.requests(m0) if e["method"] == "GET" and "/blobs/" in e["path"] and e["bytes"] > 100000]
        h.check("pull --lock again: exit 0, the files left as they are (same inode, mtime, bytes)",
                r.returncode == 0 and before == after and len(before) == 3 and not cmp_dir(pd, files),
                f"exit {r.returncode}: {tail(r.stderr)}; {before} -> {after}")
        h.note(f"the second pull made {len(blob_gets)} whole-blob GETs")
        pdx = os.path.join(new_dir("pull-x"), "deps")
        r = h.tpkg("pull", "--lock", lx, "-o", pdx)
        bad = cmp_dir(pdx, {"tools_tok-1.0.0.tpkg": pkgs[("tools/tok", "1.0.0")],
                            "e-1.0.0+build5.tpkg": pkgs[("e", "1.0.0+build5")]})
        h.check("pull --lock appx: tools_tok-1.0.0.tpkg ('/' -> '_') and e-1.0.0+build5.tpkg, byte-exact",
                r.returncode == 0 and not bad, f"exit {r.returncode}: {tail(r.stderr)}; bad {bad}")
        # an existing different file
        pf = os.path.join(new_dir("pull-force"), "deps")
        os.makedirs(pf)
        other = os.path.join(pf, "c-1.2.0.tpkg")
        shutil.copy(pkgs[("c", "1.1.0")], other)
        r = h.tpkg("pull", "--lock", dl, "-o", pf)
        h.check("pull --lock with a different DIR/c-1.2.0.tpkg: exit 2 naming it, the file unchanged",
                r.returncode == 2 and "c-1.2.0.tpkg" in r.stderr
                and open(other, "rb").read() == open(pkgs[("c", "1.1.0")], "rb").read(),
                f"exit {r.returncode}: {tail(r.stderr)}")
        r = h.tpkg("pull", "--lock", dl, "-o", pf, "--force")
        bad = cmp_dir(pf, files)
        h.check("pull --lock --force: exit 0, replaced, every file byte-exact", r.returncode == 0 and not bad,
                f"exit {r.returncode}: {tail(r.stderr)}; bad {bad}")
        # a lock with a wrong root digest for c
        lock = json.loads(diamond_text or b"{}")
        wrong = os.path.join(locks, "wrong-root.lock")
        for p in lock.get("packages", []):
            if p.get("name") == "c":
                p["root_sha256"] = roots[("c", "1.1.0")]
        with open(wrong, "w") as f:
            json.dump(lock, f, indent=2)
        pw = os.path.join(new_dir("pull-wrong"), "deps")
        r = h.tpkg("pull", "--lock", wrong, "-o", pw)
        h.check("pull --lock with c's root_sha256 edited (another valid digest): exit 5",
                r.returncode == 5, f"exit {r.returncode}: {tail(r.stderr)}")
        h.note(f"after the exit 5, DIR holds {sorted(os.listdir(pw)) if os.path.isdir(pw) else '(no DIR)'}")

        # -- 8. mount -o deps ----------------------------------------------------------------------------
        h.section("8. mount.torshpkg -o deps")

        def check_deps_mount(label: str, mnt: str, app: str, want: dict[str, str], key: dict[str, str] | None = None):
            """.deps lists exactly want's names ('/' -> '+'); every file byte-exact; version xattr."""
            key = key or want
            names = sorted(n.replace("/", "+") for n in want)
            ls, why = bounded(lambda: sorted(os.listdir(os.path.join(mnt, ".deps"))))
            h.check(f"{label}: MNT/.deps lists exactly {names}", ls == names, f"{ls} {why or ''}")
            for n, v in sorted(want.items()):
                d = os.path.join(mnt, ".deps", n.replace("/", "+"))
                src = srcs[(n, key[n])]
                entries, why = bounded(lambda: walk(d))
                h.check(f"{label}: .deps/{n.replace('/', '+')} has the entries of {n} {v}", entries == walk(src),
                        f"{entries} vs {walk(src)} {why or ''}")
                res = read_tree(d, file_digests(src))
                h.check(f"{label}: every file of .deps/{n.replace('/', '+')} is byte-exact", all_ok(res), summary(res))
                xv, why = bounded(lambda: os.getxattr(d, "user.torshpkg.version").decode())
                h.check(f"{label}: user.torshpkg.version of .deps/{n.replace('/', '+')} is {v}", xv == v, f"{xv!r} {why or ''}")
                xr, _ = bounded(lambda: os.getxattr(d, "user.torshpkg.root_sha256").decode())
                h.note(f".deps/{n.replace('/', '+')}: user.torshpkg.root_sha256 {xr} (locked {roots[(n, key[n])]})")
            asrc = srcs[(app, "1.0.0")]
            res = read_tree(mnt, file_digests(asrc))
            h.check(f"{label}: the package's own files are byte-exact", all_ok(res), summary(res))
            entries, why = bounded(lambda: [e for e in walk(mnt) if e != ".deps" and not e.startswith(".deps/")])
            h.check(f"{label}: the package's own entries (besides .deps)", entries == walk(asrc), f"{entries} {why or ''}")
            xr, why = bounded(lambda: os.getxattr(mnt, "user.torshpkg.root_sha256").decode())
            h.check(f"{label}: user.torshpkg.root_sha256 of MNT is the lock's root.root_sha256",
                    xr == roots[(app, "1.0.0")], f"{xr!r} {why or ''}")

            def write_dep():
                first = sorted(want)[0].replace("/", "+")
                try:
                    with open(os.path.join(mnt, ".deps", first, "README.txt"), "ab") as f:
                        f.write(b"x")
                    return "opened for writing"
                except OSError as e:
                    return e.errno
            w, why = bounded(write_dep)
            h.check(f"{label}: a dependency's file cannot be opened for writing (read-only)",
                    isinstance(w, int), f"{w} {why or ''}")

        def mount_ok(label, pkg, mnt, *opts):
            rc, log = h.mount(pkg, mnt, *opts)
            return h.check(f"{label}: mount exits 0", rc == 0 and os.path.ismount(mnt), f"exit {rc}: {tail(log)}")

        def unmount_clean(label, mnt):
            ok = h.unmount(mnt)
            h.check(f"{label}: unmounts cleanly, the daemon exits", ok and h.reaped_clean and not os.path.ismount(mnt))

        def refused(label, pkg, mnt, *opts, words=()):
            rc, log = h.mount(pkg, mnt, *opts)
            up = os.path.ismount(mnt)
            if up:
                h.unmount(mnt)
            missing = [w for w in words if w not in log]
            h.check(f"{label}: refused (non-zero exit, nothing mounted, the message names {', '.join(words) or '-'})",
                    rc not in (0, None) and not up and not missing and "unknown mount option" not in log,
                    f"exit {rc}, mounted {up}: {tail(log)}")

        mnt = os.path.join(T, "mnt-diamond")
        lab = "mount app.tpkg -o deps (torshpkg.lock beside it)"
        if mount_ok(lab, apps["app"], mnt, "-o", "deps"):
            check_deps_mount(lab, mnt, "app", diamond)
            unmount_clean(lab, mnt)
        # the same lock elsewhere, the package in a dir without torshpkg.lock
        elsewhere = new_dir("elsewhere")
        app_copy = os.path.join(elsewhere, "app.tpkg")
        shutil.copy(apps["app"], app_copy)
        mnt = os.path.join(T, "mnt-diamond-file")
        lab = "mount app.tpkg -o deps=diamond.lock"
        if mount_ok(lab, app_copy, mnt, "-o", f"deps={dl}"):
            check_deps_mount(lab, mnt, "app", diamond)
            unmount_clean(lab, mnt)
        refused("mount -o deps with no torshpkg.lock beside the package", app_copy, os.path.join(T, "mnt-nolock"),
                "-o", "deps", words=["torshpkg.lock"])
        mnt = os.path.join(T, "mnt-appx")
        lab = "mount appx.tpkg -o deps (tools/tok, e 1.0.0+build5)"
        if mount_ok(lab, apps["appx"], mnt, "-o", "deps"):
            check_deps_mount(lab, mnt, "appx", {"tools/tok": "1.0.0", "e": "1.0.0+build5"})
            unmount_clean(lab, mnt)
        refused("mount app2.tpkg -o deps=diamond.lock (a lock for another package)", apps["app2"],
                os.path.join(T, "mnt-other"), "-o", f"deps={dl}", words=[dl])
        refused("mount app.tpkg -o deps=wrong-root.lock (c's root_sha256 tampered)", apps["app"],
                os.path.join(T, "mnt-tampered"), "-o", f"deps={wrong}", words=[wrong])

        # -- 7b. a tag moved after locking ---------------------------------------------------------------
        h.section("7b. c:1.2.0 moved to another package after locking")
        moved = ""
        try:
            make_pkg("c", "1.2.0", [], variant="republished", key="1.2.0-republished")
            moved = push(pkgs[("c", "1.2.0-republished")], "c", "1.2.0")
            h.check("the registry's c:1.2.0 is now another manifest, another root digest",
                    moved != digests[("c", "1.2.0")] and roots[("c", "1.2.0-republished")] != roots[("c", "1.2.0")],
                    f"{moved}")
        except RuntimeError as e:
            h.check("republish c:1.2.0", False, str(e))
        pm = os.path.join(new_dir("pull-moved"), "deps")
        r = h.tpkg("pull", "--lock", dl, "-o", pm)
        bad = cmp_dir(pm, files)
        h.check("pull --lock after the tag moved: exit 0, c-1.2.0.tpkg is the locked (original) bytes",
                r.returncode == 0 and not bad, f"exit {r.returncode}: {tail(r.stderr)}; bad {bad}")
        mnt = os.path.join(T, "mnt-moved")
        lab = "mount -o deps after the tag moved"
        if mount_ok(lab, apps["app"], mnt, "-o", "deps"):
            res = read_tree(os.path.join(mnt, ".deps", "c"), file_digests(srcs[("c", "1.2.0")]))
            h.check(f"{lab}: .deps/c has the locked c 1.2.0's files", all_ok(res), summary(res))
            unmount_clean(lab, mnt)
        r = resolve(apps["app"], "-o", os.path.join(locks, "after-move.lock"))
        lock, why = load_lock(os.path.join(locks, "after-move.lock"))
        h.check("resolve after the tag moved: c 1.2.0 with the new manifest and root digest",
                r.returncode == 0 and by_name(lock).get("c", {}).get("source") == f"{REGISTRY}/c@{moved}"
                and by_name(lock).get("c", {}).get("root_sha256") == roots[("c", "1.2.0-republished")],
                f"exit {r.returncode}: {tail(r.stderr)}; {by_name(lock).get('c')}")


if __name__ == "__main__":
    main()
