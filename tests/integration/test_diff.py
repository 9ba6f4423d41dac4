#!/usr/bin/env python3
"""torshpkg diff OLD NEW: files added/removed/changed, the tensors of a changed safetensors file
(changed in place, added and removed, reshaped, dtype changed), manifest fields and dependencies,
the chunks NEW shares with OLD, --json, --exit-code, trust options and a missing package.

A small generated model (gen-model.py --weights-size 8M) is packed, then variants of it, each made
here by rewriting model.safetensors or config.json with Python. Environment: TORSHPKG, GEN_MODEL
(set by meson).
"""
import json
import os
import shutil
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tpkgtest import Harness, tail  # noqa: E402

WEIGHTS = "model.safetensors"


def human_bytes(n):
    """What torshpkg prints for a size (cli human_bytes)."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    v, u = float(n), 0
    while v >= 1024 and u < 5:
        v, u = v / 1024, u + 1
    return f"{n} B" if u == 0 else f"{v:.1f} {units[u]}"


def human_count(n):
    """What torshpkg prints for a parameter count (cli human_count)."""
    if n < 1000:
        return str(n)
    v, u = float(n), 0
    while v >= 999.95 and u < 4:
        v, u = v / 1000, u + 1
    return f"{v:.1f}{['', 'K', 'M', 'B', 'T'][u]}"


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def read_st(path):
    """(header length, header dict in file order, whole file bytes)"""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    return n, json.loads(data[8:8 + n]), data


def tensors_of(header):
    return {k: v for k, v in header.items() if k != "__metadata__"}


def write_st(path, metadata, entries):
    """A safetensors file: 8-byte little-endian header length, JSON header (padded to 8), data.
    entries: [(name, dtype, shape, bytes)] in file order."""
    header, data, off = {"__metadata__": metadata}, [], 0
    for name, dtype, shape, raw in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        data.append(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(data))


def rewrite_header_in_place(path, header, n):
    """The header re-serialised into the same n bytes (space padded): every data offset stays."""
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n, (len(text), n)
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


def overlapping(tensors, at, lo, hi):
    """Bytes of the tensors (data starting at file offset `at`) that overlap file range [lo, hi)."""
    total = 0
    for t in tensors.values():
        b, e = at + t["data_offsets"][0], at + t["data_offsets"][1]
        if b < hi and e > lo:
            total += e - b
    return total


def main():
    with Harness("diff", deadline=540) as h:
        T = h.tmp
        base = os.path.join(T, "base")
        h.gen_model(base, "--weights-size", "8M", "--small-files", "10")
        n_hdr, header, st_bytes = read_st(os.path.join(base, WEIGHTS))
        tensors = tensors_of(header)
        data_at = 8 + n_hdr
        total_params = sum(numel(t["shape"]) for t in tensors.values())
        entries = sum(len(files) for _, _, files in os.walk(base))

        def pack(src, name, *extra):
            out = os.path.join(T, name + ".tpkg")
            r = h.tpkg("pack", src, "-o", out, "-q", "--name", "tiny", *extra)
            if not h.check(f"pack {name}", r.returncode == 0, tail(r.stderr)):
                raise RuntimeError(f"cannot pack {name}")
            return out

        def variant(name):
            d = os.path.join(T, name)
            shutil.copytree(base, d, symlinks=True)
            return d

        def diff_json(old, new, what):
            r = h.tpkg("diff", "--json", old, new)
            if not h.check(f"{what}: diff --json exits 0", r.returncode == 0, f"exit {r.returncode}: {tail(r.stderr)}"):
                return None
            try:
                return json.loads(r.stdout)
            except ValueError as e:
                h.check(f"{what}: diff --json parses", False, str(e))
                return None

        def diff_text(old, new):
            r = h.tpkg("diff", old, new)
            return r.stdout if r.returncode == 0 else f"exit {r.returncode}: {r.stderr}"

        def groups(j, path=WEIGHTS):
            t = j["tensors"].get(path, {})
            return {g: t.get(g, {}).get("count") for g in ("added", "removed", "changed", "reshaped", "dtype_changed")}

        def only(**want):
            out = {g: 0 for g in ("added", "removed", "changed", "reshaped", "dtype_changed")}
            out.update(want)
            return out

        def changed_weights_only(j, what):
            f = j["files"]
            h.check(f"{what}: only {WEIGHTS} changed, {entries - 1} unchanged",
                    [c["path"] for c in f["changed"]] == [WEIGHTS] and not f["added"] and not f["removed"]
                    and f["unchanged"] == entries - 1 and j["differ"] is True, json.dumps(f)[:600])

        base_pkg = pack(base, "base")

        h.section("(a) identical repack")
        same_pkg = pack(base, "same")
        j = diff_json(base_pkg, same_pkg, "identical")
        if j:
            h.check("identical: stable top-level keys",
                    list(j) == ["old", "new", "differ", "manifest", "files", "tensors", "shared", "bytes_compared"],
                    f"{list(j)}")
            h.check("identical: differ is false, nothing added/removed/changed, every entry unchanged",
                    j["differ"] is False and j["files"] == {"added": [], "removed": [], "changed": [], "unchanged": entries},
                    json.dumps(j["files"]))
            h.check("identical: no manifest change", j["manifest"] == {
                "fields": {}, "dependencies": {"added": [], "removed": [], "changed": []}, "formats": []},
                json.dumps(j["manifest"]))
            h.check("identical: no tensor diff, nothing read to compare", j["tensors"] == {} and j["bytes_compared"] == 0,
                    f"{j['tensors']} {j['bytes_compared']}")
            s = j["shared"]
            h.check("identical: 100% of NEW's chunks shared",
                    s["chunks"] == s["new_chunks"] > 0 and s["bytes"] == s["new_bytes"] > 0 and s["percent"] == 100.0,
                    json.dumps(s))
            h.check("identical: old/new describe both packages",
                    j["old"]["package"] == base_pkg and j["new"]["package"] == same_pkg
                    and j["old"]["chunk_size"] == 1 << 20 and j["new"]["signature"] == "not signed"
                    and len(j["old"]["root_sha256"]) == 64, json.dumps(j["old"]) + json.dumps(j["new"]))
            text = diff_text(base_pkg, same_pkg)
            h.check("identical: text says no differences and 100% shared",
                    f"files       0 changed, 0 added, 0 removed, {entries} unchanged; no differences\n" in text
                    and f"shared      {s['chunks']} of {s['chunks']} chunks of new ({human_bytes(s['bytes'])} of "
                        f"{human_bytes(s['bytes'])} stored, 100.0%); 0 B to fetch\n" in text, text)
            h.check("identical: text names both packages",
                    text.startswith(f"old         {base_pkg}: ") and f"\nnew         {same_pkg}: " in text, text)
        r = h.tpkg("diff", "--exit-code", base_pkg, same_pkg)
        h.check("identical: --exit-code exits 0", r.returncode == 0, f"exit {r.returncode}: {tail(r.stderr)}")

        h.section("(b) one tensor's bytes changed in place")
        d = variant("inplace")
        chunk = 1 << 20
        # A tensor past the first chunk; 16 bytes in its middle, inside one chunk.
        name, t = next((k, v) for k, v in tensors.items() if data_at + v["data_offsets"][0] >= chunk
                       and v["data_offsets"][1] - v["data_offsets"][0] >= 64)
        pos = data_at + (t["data_offsets"][0] + t["data_offsets"][1]) // 2 // 16 * 16
        if pos // chunk != (pos + 15) // chunk:
            pos -= 16
        raw = bytearray(st_bytes)
        raw[pos:pos + 16] = bytes(b ^ 0x55 for b in raw[pos:pos + 16])
        with open(os.path.join(d, WEIGHTS), "wb") as f:
            f.write(raw)
        inplace_pkg = pack(d, "inplace")
        j = diff_json(base_pkg, inplace_pkg, "in place")
        if j:
            changed_weights_only(j, "in place")
            c = j["files"]["changed"][0] if j["files"]["changed"] else {}
            h.check("in place: old and new size of the file", c.get("old_size") == c.get("new_size") == len(st_bytes),
                    json.dumps(c))
            tj = j["tensors"].get(WEIGHTS, {})
            h.check("in place: exactly one tensor changed, none added/removed/reshaped/retyped",
                    groups(j) == only(changed=1), json.dumps(groups(j)))
            h.check("in place: the changed tensor, its dtype, shape and parameters",
                    tj.get("changed", {}).get("tensors") == [{"name": name, "dtype": t["dtype"], "shape": t["shape"],
                                                              "parameters": numel(t["shape"])}]
                    and tj["changed"]["parameters"] == numel(t["shape"]), json.dumps(tj.get("changed"))[:600])
            h.check("in place: unchanged and total parameters",
                    tj.get("unchanged") == {"count": len(tensors) - 1, "parameters": total_params - numel(t["shape"])}
                    and tj.get("old_parameters") == tj.get("new_parameters") == total_params
                    and tj.get("old_tensors") == tj.get("new_tensors") == len(tensors), json.dumps(tj.get("unchanged")))
            # Only tensors over the changed chunk may be read: the chunk digests vouch for the rest.
            bound = overlapping(tensors, data_at, pos // chunk * chunk, pos // chunk * chunk + chunk)
            h.check(f"in place: bytes read to compare are those of the changed chunk's tensors (<= {bound})",
                    0 < j["bytes_compared"] <= bound < len(st_bytes), f"{j['bytes_compared']}")
            s = j["shared"]
            h.check("in place: all of NEW's chunks but one are shared",
                    s["chunks"] == s["new_chunks"] - 1 and 0 < s["bytes"] < s["new_bytes"], json.dumps(s))
            text = diff_text(base_pkg, inplace_pkg)
            n = numel(t["shape"])
            h.check("in place: text shows the file, the tensor group line and the tensor",
                    f"changed     {WEIGHTS} ({human_bytes(len(st_bytes))} -> {human_bytes(len(st_bytes))})\n"
                    f"  tensors   1 changed ({human_count(n)} params); {len(tensors) - 1} unchanged; "
                    f"{human_count(total_params)} -> {human_count(total_params)} params\n"
                    f"  changed   {name}  {t['dtype']} [{', '.join(map(str, t['shape']))}]  {human_count(n)} params\n"
                    in text and "no differences" not in text, text)
            h.check("in place: text counts the files",
                    f"files       1 changed, 0 added, 0 removed, {entries - 1} unchanged\n" in text, text)
        r = h.tpkg("diff", base_pkg, inplace_pkg)
        h.check("in place: without --exit-code, differing packages exit 0", r.returncode == 0, f"exit {r.returncode}")
        r = h.tpkg("diff", "--exit-code", base_pkg, inplace_pkg)
        h.check("in place: --exit-code exits 1", r.returncode == 1 and r.stdout, f"exit {r.returncode}: {tail(r.stderr)}")
        r = h.tpkg("diff", "--exit-code", "--json", base_pkg, inplace_pkg)
        h.check("in place: --exit-code --json exits 1 with the JSON",
                r.returncode == 1 and json.loads(r.stdout or "{}").get("differ") is True, f"exit {r.returncode}")

        h.section("(c) a tensor added, another removed")
        d = variant("addrm")
        removed = "model.norm.weight"
        new_entries = [(k, v["dtype"], v["shape"], st_bytes[data_at + v["data_offsets"][0]:data_at + v["data_offsets"][1]])
                       for k, v in tensors.items() if k != removed]
        new_entries.append(("extra.weight", "F32", [8, 16], struct.pack("<128f", *range(128))))
        write_st(os.path.join(d, WEIGHTS), header.get("__metadata__", {}), new_entries)
        addrm_pkg = pack(d, "addrm")
        j = diff_json(base_pkg, addrm_pkg, "add/remove")
        if j:
            changed_weights_only(j, "add/remove")
            tj = j["tensors"].get(WEIGHTS, {})
            rt = tensors[removed]
            h.check("add/remove: one added, one removed, nothing else", groups(j) == only(added=1, removed=1),
                    json.dumps(groups(j)))
            h.check("add/remove: the added tensor (F32 [8, 16], 128 params)",
                    tj.get("added", {}).get("tensors") == [{"name": "extra.weight", "dtype": "F32", "shape": [8, 16],
                                                            "parameters": 128}]
                    and tj["added"]["parameters"] == 128, json.dumps(tj.get("added")))
            h.check("add/remove: the removed tensor, with its old parameters",
                    tj.get("removed", {}).get("tensors") == [{"name": removed, "dtype": rt["dtype"], "shape": rt["shape"],
                                                              "parameters": numel(rt["shape"])}]
                    and tj["removed"]["parameters"] == numel(rt["shape"]), json.dumps(tj.get("removed")))
            h.check("add/remove: every other tensor unchanged although its offset moved; totals",
                    tj.get("unchanged", {}).get("count") == len(tensors) - 1
                    and tj.get("old_parameters") == total_params
                    and tj.get("new_parameters") == total_params - numel(rt["shape"]) + 128
                    and tj.get("new_tensors") == len(tensors), json.dumps(tj.get("unchanged")))
            text = diff_text(base_pkg, addrm_pkg)
            h.check("add/remove: text lists both tensors",
                    "  added     extra.weight  F32 [8, 16]  128 params\n" in text
                    and f"  removed   {removed}  {rt['dtype']} [{', '.join(map(str, rt['shape']))}]  "
                        f"{human_count(numel(rt['shape']))} params\n" in text
                    and f"1 added (128 params), 1 removed ({human_count(numel(rt['shape']))} params); "
                        f"{len(tensors) - 1} unchanged" in text, text)

        # A 2-D tensor with two different dimensions, past the first chunk: reshaped and retyped below.
        two_d = [k for k, v in tensors.items() if len(v["shape"]) == 2 and v["shape"][0] != v["shape"][1]]
        target = two_d[-1]
        tt = tensors[target]
        target_bytes = tt["data_offsets"][1] - tt["data_offsets"][0]
        header_chunk_tensors = overlapping(tensors, data_at, 0, chunk)

        h.section("(d) one tensor reshaped, same bytes")
        d = variant("reshape")
        hdr = json.loads(json.dumps(header))
        hdr[target]["shape"] = [tt["shape"][1], tt["shape"][0]]
        rewrite_header_in_place(os.path.join(d, WEIGHTS), hdr, n_hdr)
        reshape_pkg = pack(d, "reshape")
        j = diff_json(base_pkg, reshape_pkg, "reshape")
        if j:
            changed_weights_only(j, "reshape")
            tj = j["tensors"].get(WEIGHTS, {})
            n = numel(tt["shape"])
            h.check("reshape: one tensor reshaped, nothing else", groups(j) == only(reshaped=1), json.dumps(groups(j)))
            h.check("reshape: old and new shape, same bytes, same parameters",
                    tj.get("reshaped", {}).get("tensors") == [{
                        "name": target, "old_dtype": tt["dtype"], "new_dtype": tt["dtype"], "old_shape": tt["shape"],
                        "new_shape": hdr[target]["shape"], "old_parameters": n, "new_parameters": n, "same_bytes": True}]
                    and tj["reshaped"]["parameters"] == n, json.dumps(tj.get("reshaped")))
            h.check("reshape: only tensors in the rewritten header's chunk (and the reshaped one) are read",
                    j["bytes_compared"] <= header_chunk_tensors + target_bytes < len(st_bytes), f"{j['bytes_compared']}")
            text = diff_text(base_pkg, reshape_pkg)
            h.check("reshape: text shows both shapes and same bytes",
                    f"  reshaped  {target}  {tt['dtype']} [{tt['shape'][0]}, {tt['shape'][1]}] -> "
                    f"[{tt['shape'][1]}, {tt['shape'][0]}]  {human_count(n)} params, same bytes\n" in text, text)

        h.section("(e) one tensor's dtype changed, same bytes")
        d = variant("dtype")
        hdr = json.loads(json.dumps(header))
        new_dtype = "F16" if tt["dtype"] != "F16" else "BF16"
        hdr[target]["dtype"] = new_dtype
        rewrite_header_in_place(os.path.join(d, WEIGHTS), hdr, n_hdr)
        dtype_pkg = pack(d, "dtype")
        j = diff_json(base_pkg, dtype_pkg, "dtype")
        if j:
            changed_weights_only(j, "dtype")
            tj = j["tensors"].get(WEIGHTS, {})
            n = numel(tt["shape"])
            h.check("dtype: one tensor dtype-changed, nothing else", groups(j) == only(dtype_changed=1),
                    json.dumps(groups(j)))
            h.check("dtype: old and new dtype, same bytes",
                    tj.get("dtype_changed", {}).get("tensors") == [{
                        "name": target, "old_dtype": tt["dtype"], "new_dtype": new_dtype, "old_shape": tt["shape"],
                        "new_shape": tt["shape"], "old_parameters": n, "new_parameters": n, "same_bytes": True}],
                    json.dumps(tj.get("dtype_changed")))
            text = diff_text(base_pkg, dtype_pkg)
            h.check("dtype: text shows both dtypes",
                    f"  dtype     {target}  {tt['dtype']} -> {new_dtype} [{tt['shape'][0]}, {tt['shape'][1]}]  "
                    f"{human_count(n)} params, same bytes\n" in text
                    and f"1 dtype changed ({human_count(n)} params)" in text, text)

        h.section("(f) config.json only")
        d = variant("config")
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        cfg["torshpkg_diff_test"] = 1
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        config_pkg = pack(d, "config")
        j = diff_json(base_pkg, config_pkg, "config")
        if j:
            f = j["files"]
            new_size = os.path.getsize(os.path.join(d, "config.json"))
            old_size = os.path.getsize(os.path.join(base, "config.json"))
            h.check("config: only config.json changed, with both sizes",
                    f["changed"] == [{"path": "config.json", "old_size": old_size, "new_size": new_size}]
                    and not f["added"] and not f["removed"] and f["unchanged"] == entries - 1, json.dumps(f)[:600])
            h.check("config: no tensor diff, nothing read", j["tensors"] == {} and j["bytes_compared"] == 0,
                    f"{j['tensors']} {j['bytes_compared']}")
            h.check("config: manifest fields unchanged", j["manifest"]["fields"] == {}, json.dumps(j["manifest"]))
            # Everything but config.json's one chunk is shared: what is left to fetch is its stored bytes.
            r = h.tpkg("ls", "-l", config_pkg)
            stored = next((int(line.split()[2]) for line in r.stdout.splitlines() if line.endswith(" config.json")), None)
            s = j["shared"]
            h.check("config: every chunk shared but config.json's",
                    s["chunks"] == s["new_chunks"] - 1 and s["new_bytes"] - s["bytes"] == stored, f"{json.dumps(s)}, {stored}")
            text = diff_text(base_pkg, config_pkg)
            pct = 100.0 * s["bytes"] / s["new_bytes"]
            h.check("config: text shows the file and what is left to fetch",
                    f"changed     config.json ({human_bytes(old_size)} -> {human_bytes(new_size)})\n" in text
                    and f"({human_bytes(s['bytes'])} of {human_bytes(s['new_bytes'])} stored, {pct:.1f}%); "
                        f"{human_bytes(stored)} to fetch\n" in text and "tensors" not in text, text)

        h.section("(g) manifest: version, license, dependencies")
        v2 = pack(base, "v2", "--version", "0.2.0", "--license", "MIT", "--depends", "tokenizer-base@^1.2")
        j = diff_json(base_pkg, v2, "manifest")
        if j:
            m = j["manifest"]
            h.check("manifest: version and license changed, nothing else",
                    m["fields"] == {"version": {"old": "0.1.0", "new": "0.2.0"}, "license": {"old": "", "new": "MIT"}},
                    json.dumps(m["fields"]))
            h.check("manifest: the dependency added",
                    m["dependencies"] == {"added": [{"name": "tokenizer-base", "range": "^1.2"}], "removed": [], "changed": []},
                    json.dumps(m["dependencies"]))
            h.check("manifest: no file changed, 100% shared, differ",
                    j["files"]["unchanged"] == entries and not j["files"]["changed"] and j["shared"]["percent"] == 100.0
                    and j["differ"] is True and j["new"]["version"] == "0.2.0", json.dumps(j["files"])[:300])
            text = diff_text(base_pkg, v2)
            h.check("manifest: text lines",
                    "version     0.1.0 -> 0.2.0\n" in text and "license     - -> MIT\n" in text
                    and "depends     + tokenizer-base ^1.2\n" in text, text)
        r = h.tpkg("diff", "--exit-code", base_pkg, v2)
        h.check("manifest: --exit-code exits 1 for a version change alone", r.returncode == 1, f"exit {r.returncode}")
        v3 = pack(base, "v3", "--version", "0.3.0", "--depends", "tokenizer-base@^2", "--depends", "vocab@1.0.0")
        j = diff_json(v2, v3, "dependencies")
        if j:
            h.check("dependencies: a range changed, one added; license removed",
                    j["manifest"]["dependencies"] == {
                        "added": [{"name": "vocab", "range": "1.0.0"}], "removed": [],
                        "changed": [{"name": "tokenizer-base", "old_range": "^1.2", "new_range": "^2"}]}
                    and j["manifest"]["fields"].get("license") == {"old": "MIT", "new": ""},
                    json.dumps(j["manifest"]))
            text = diff_text(v2, v3)
            h.check("dependencies: text lines", "depends     ~ tokenizer-base ^1.2 -> ^2\n" in text
                    and "depends     + vocab 1.0.0\n" in text, text)
        j = diff_json(v3, base_pkg, "dependencies removed")
        if j:
            h.check("dependencies: removed when NEW has none", [d["name"] for d in j["manifest"]["dependencies"]["removed"]]
                    == ["tokenizer-base", "vocab"], json.dumps(j["manifest"]["dependencies"]))

        h.section("trust options and errors")
        key = os.path.join(T, "k")
        r = h.tpkg("keygen", "-o", key)
        h.check("keygen", r.returncode == 0, tail(r.stderr))
        signed = os.path.join(T, "signed.tpkg")
        r = h.tpkg("sign", base_pkg, "--key", key + ".key", "-o", signed)
        h.check("sign a copy", r.returncode == 0, tail(r.stderr))
        r = h.tpkg("diff", "--json", "--pubkey", key + ".pub", signed, signed)
        ok = r.returncode == 0 and json.loads(r.stdout)["old"]["signature"].startswith("signed by trusted key")
        h.check("--pubkey: two packages signed by that key compare (exit 0, trusted)", ok,
                f"exit {r.returncode}: {tail(r.stdout)} {tail(r.stderr)}")
        r = h.tpkg("diff", "--pubkey", key + ".pub", signed, base_pkg)
        h.check("--pubkey: an unsigned NEW is refused as inspect's options promise (exit 7, names it)",
                r.returncode == 7 and base_pkg in r.stderr and "not signed" in r.stderr and not r.stdout,
                f"exit {r.returncode}: {tail(r.stderr)}")
        missing = os.path.join(T, "missing.tpkg")
        want = h.tpkg("inspect", missing).returncode
        for args, what in (([missing, base_pkg], "OLD"), ([base_pkg, missing], "NEW")):
            r = h.tpkg("diff", *args)
            h.check(f"a missing {what}: the exit status of inspect ({want}), one line naming it",
                    want == 3 and r.returncode == want and missing in r.stderr and len(r.stderr.splitlines()) == 1
                    and not r.stdout, f"exit {r.returncode}: {tail(r.stderr)}")
        r = h.tpkg("diff", base_pkg)
        h.check("one package only: usage error (exit 2)", r.returncode == 2, f"exit {r.returncode}: {tail(r.stderr)}")


if __name__ == "__main__":
    main()
