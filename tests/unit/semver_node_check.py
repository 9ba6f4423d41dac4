#!/usr/bin/env python3
"""Cross-checks torshpkg's semver ranges and version order against Debian's node-semver.

Usage: semver_node_check.py PATH-TO-semver-probe

Generates (with a fixed seed) some 24000 (version, range) pairs plus a hand-written list of tricky
ones, asks tests/unit/semver_probe.cpp and node-semver (non-loose, includePrerelease false) about
all of them in one batch each, and fails listing the first 20 pairs where torshpkg accepted both
the version and the range but answered differently from node (node calling either invalid counts
as a disagreement: a range torshpkg accepts must mean the same to npm). Torshpkg is deliberately
stricter, so pairs it rejects are only counted. Also compares the order of ~2000 version pairs with
semver.compare. Exit 77 (meson's "skipped") when node or node-semver is not installed.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import time

SEED = 20240611
MAX_SAFE = 2**53 - 1
SHOW = 20

# Reads {"sat": [[version, range], ...], "cmp": [[a, b], ...]} on stdin; writes the answers as
# {"sat": ["1"|"0"|"invalid", ...], "cmp": ["-1"|"0"|"1"|"invalid", ...], "version": ..., "path": ...}.
NODE_SCRIPT = r"""
'use strict';
let semver, where;
for (const name of ['/usr/share/nodejs/semver', 'semver']) {  // Debian's first
  try { semver = require(name); where = require.resolve(name); break; } catch (e) {}
}
if (!semver) { process.stderr.write('node-semver not found\n'); process.exit(77); }
const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const ranges = new Map();
const rangeOf = (r) => {
  if (!ranges.has(r)) {
    let parsed = null;
    try { parsed = new semver.Range(r); } catch (e) {}
    ranges.set(r, parsed);
  }
  return ranges.get(r);
};
const sat = input.sat.map(([v, r]) => {
  const version = semver.parse(v);
  const range = rangeOf(r);
  if (version === null || range === null) return 'invalid';
  return range.test(version) ? '1' : '0';
});
const cmp = input.cmp.map(([a, b]) => {
  const va = semver.parse(a), vb = semver.parse(b);
  if (va === null || vb === null) return 'invalid';
  return String(semver.compare(va, vb));
});
let version = '?';
try { version = require(require('path').join(require('path').dirname(where), 'package.json')).version; } catch (e) {}
process.stdout.write(JSON.stringify({sat, cmp, version, path: where}));
"""

# Hand-written cases: node quirks, caret/tilde edges at zero, x-ranges, hyphen ends, pre-release
# rules, build metadata, limits. Ranges torshpkg rejects are fine here too (they are only counted).
TRICKY_RANGES = [
    "^0.0.0", "^0.0.1", "^0.0.1-beta", "^0.0", "^0.0.x", "^0.x", "^0", "^0.1", "^0.1.2", "^0.1.2-rc.1",
    "^1", "^1.2", "^1.2.3", "^1.2.3-beta.2", "^1.x", "^1.2.x", "^*", "^x", "^v1.2.3", "^=1.2.3",
    "~0", "~0.0", "~0.0.1", "~1", "~1.2", "~1.2.3", "~1.2.3-beta.2", "~1.x", "~*", "~v1.2", "~=1.2.3",
    "*", "x", "X", "1.x", "1.X", "1.*", "1.2.x", "1.x.x", "1.*.*", "0.x", "0.0.x",
    ">1", ">1.2", ">1.2.3", ">1.x", ">*", ">x", ">=1", ">=1.2", ">=1.x", ">=*", "<1", "<1.2", "<1.x", "<*",
    "<=1", "<=1.2", "<=1.x", "<=*", "=1", "=1.2", "=1.2.3", "=*", "=v1.2.3", "v1.2.3", "=1.2.3-beta",
    ">=0.0.0", ">0.0.0", "<0.0.0", "<0.0.0-0", ">=0.0.0-0", "<=0.0.0", "<1.0.0-0", "<1.0.0-alpha",
    ">=1.2.3-beta", ">1.2.3-beta", "<1.2.3-beta", "<=1.2.3-beta", ">=1.2.3-0 <1.2.3",
    ">=1.2.3 <1.2.3", ">1.2.3 <1.2.3", ">=1.2.7 <1.3.0", ">=1.2.7 || <1.2.0",
    "1.2.3 - 2.3.4", "1.2 - 2.3.4", "1.2.3 - 2.3", "1.2.3 - 2", "1 - 2", "* - 2", "1.2.3 - *", "1.x - 2.x",
    "1.2.3-pre - 2.0.0", "1.2.3 - 2.0.0-pre", "1.2.3-pre - 2.0.0-pre", "v1.2.3 - v2.0.0", "0 - 0",
    "1.2.3+build - 2.3.4+build", "1.2.3  -  2.3.4", "1.2.3 - 2.3.4 || 3.x",
    "1.2.3-beta || *", "1.2.3-beta || x", "1.2.3-beta || >=0.0.0", "*  || 1.2.3-beta", "<0.0.0 || 1.2.3",
    ">=1.2.3-beta || >=0.0.0 <2", "^1.2.3-beta || ^2", "1.2.3 || 1.2.4 || 1.2.5",
    ">==1.2.3", "==1.2.3", ">==1.2", "<==1.2.3", "=1.2.3 - 2", "1.2.3 - =2.0.0", "=1.2 - 2",
    "^9007199254740991", "~9007199254740991", "9007199254740991.x", ">9007199254740991",
    "<=9007199254740991", ">=9007199254740991", "<9007199254740991", "9007199254740991.0.0",
    "^9007199254740991.0.0", "<=1.9007199254740991", "1.9007199254740991", "~1.9007199254740991",
    "^0.9007199254740991", "^0.0.9007199254740991", "^1.9007199254740991", "1.2.9007199254740991",
    "1 - 9007199254740991", "9007199254740991 - 9007199254740991", "9007199254740992.0.0",
    ">=1.2.3+build.1", "1.2.3+build", "^1.2.3+b", "~1.2.3-alpha.1+b",
    ">= 1.0", "1.x.3", "1.2-beta", "~>1.2", "", "1.2.3 ||", "|| 1.2.3", "1.2.3 || || 2", "~ 1.2", "^ 1.2",
    "01.2.3", "1.02", "1.2.3.4", "x.1", "1.2.3-01", "1.2.3-", "1.2.3+", "1.2.3 - 2.3.4 - 3", "- 1",
    " ^1.2 ", "  1.2.3  ", ">=1.0.0  <2.0.0", ">=1.0.0 <2.0.0 >=1.5.0",
    ">1.2.3-alpha.3", ">1.2.3-alpha.3 <1.2.4", ">=1.2.3-alpha.7 <1.2.3", ">=1.0.0-rc.1 <=1.0.0",
    "<2.0.0-0", "<2.0.0-alpha", ">=2.0.0-0", "1.0.0--", ">=1.0.0--", "<=1.0.0-a-b",
]
TRICKY_VERSIONS = [
    "0.0.0", "0.0.0-0", "0.0.1", "0.0.1-beta", "0.0.2-0", "0.0.2", "0.1.0", "0.1.0-0", "0.1.2", "0.1.3",
    "0.2.0", "0.2.0-0", "0.9.9", "1.0.0-0", "1.0.0-alpha", "1.0.0", "1.2.2", "1.2.3-0", "1.2.3-alpha.3",
    "1.2.3-alpha.7", "1.2.3-beta", "1.2.3-beta.2", "1.2.3-beta.10", "1.2.3", "1.2.3+build", "1.2.4-0",
    "1.2.4", "1.2.7", "1.3.0-0", "1.3.0", "1.9.9", "2.0.0-0", "2.0.0-pre", "2.0.0", "2.3.4", "2.3.5",
    "2.4.0-0", "3.0.0-0", "3.0.0", "1.0.0--", "1.0.0-a-b", "1.0.0-rc.1", "1.0.0-rc.1+b",
    "9007199254740991.0.0", "9007199254740991.9007199254740991.9007199254740991",
    "1.9007199254740991.0", "0.0.9007199254740991", "9007199254740992.0.0", "1.0.0-9007199254740991",
    "1.0.0-9007199254740992", "1.2.3-" + "a" * 250, "1.2.3+" + "b" * 260, "v1.2.3", "=1.2.3", "1.2",
    "01.2.3", "1.2.3-01", " 1.2.3",
]
# Ordering edges: the SemVer 2.0.0 precedence example, numeric vs alphanumeric, lengths, builds.
ORDER_CHAIN = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
               "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.0+build", "1.0.0-0", "1.0.0-00a", "1.0.0-1a",
               "1.0.0-a", "1.0.0-A", "1.0.0--", "1.0.0-z", "1.0.0-9", "1.0.0-10", "1.0.0-9.a", "1.0.0-a.9",
               "1.0.0-alpha.9007199254740991", "1.0.0-alpha.9007199254740990", "1.0.0-1.2.3.4.5",
               "1.0.0-1.2.3.4", "9007199254740991.0.0", "9007199254740990.0.0", "2.0.0+a", "2.0.0+b",
               "1.0.0-beta+exp.sha.5114f85", "1.0.0-beta+001"]


def rnum(rng):
    r = rng.random()
    if r < 0.35:
        return 0
    if r < 0.60:
        return 1
    if r < 0.80:
        return rng.choice([2, 3, 4, 5])
    if r < 0.95:
        return rng.randint(6, 25)
    return rng.choice([MAX_SAFE, MAX_SAFE - 1, MAX_SAFE + 1, 2**53 + 2, 10**16, 123456789012])


PRE_IDS = ["alpha", "beta", "rc", "0", "1", "2", "3", "10", "11", "x", "a-b", "-", "0a", "alpha1", "Beta",
           "pre", str(MAX_SAFE), "01"]


def rpre(rng):
    forms = [["alpha"], ["beta", "1"], ["rc", "2"], ["0"], ["beta"], ["alpha", "beta"], ["1"], ["rc", "10"]]
    if rng.random() < 0.5:
        return ".".join(rng.choice(forms))
    return ".".join(rng.choice(PRE_IDS) for _ in range(rng.randint(1, 3)))


def rbuild(rng):
    return rng.choice(["build.1", "001", "sha-abc", "exp.sha.5114f85", "20240101", "x"])


def rversion(rng, base=None):
    """A version string; near `base` (a (major, minor, patch, pre) tuple) when one is given."""
    if base is not None and rng.random() < 0.8:
        major, minor, patch, pre = base
        field = rng.randrange(4)
        delta = rng.choice([-1, 0, 0, 1])
        nums = [major, minor, patch]
        if field < 3:
            nums[field] = max(0, nums[field] + delta)
            for i in range(field + 1, 3):
                if rng.random() < 0.5:
                    nums[i] = 0
        r = rng.random()
        if r < 0.25 and pre:
            suffix = "-" + pre
        elif r < 0.55:
            suffix = "-" + rpre(rng)
        else:
            suffix = ""
        text = "%d.%d.%d%s" % (nums[0], nums[1], nums[2], suffix)
    else:
        text = "%d.%d.%d" % (rnum(rng), rnum(rng), rnum(rng))
        if rng.random() < 0.35:
            text += "-" + rpre(rng)
    if rng.random() < 0.1:
        text += "+" + rbuild(rng)
    if rng.random() < 0.01:
        text = rng.choice(["v", "=", " "]) + text
    return text


def rpartial(rng, bases, allow_suffix=True):
    """A partial version such as 1, 1.2, 1.x, 1.2.3-beta.1; records its numbers in `bases`."""
    parts = rng.choice([1, 2, 3, 3, 3])
    nums = [rnum(rng) for _ in range(3)]
    words = []
    wild = False
    for i in range(parts):
        if rng.random() < 0.15 or (wild and rng.random() < 0.97):
            words.append(rng.choice(["x", "X", "*"]))
            wild = True
        else:
            words.append(str(nums[i]))
    text = ".".join(words)
    pre = ""
    if allow_suffix and parts == 3 and not wild:
        if rng.random() < 0.3:
            pre = rpre(rng)
            text += "-" + pre
        if rng.random() < 0.08:
            text += "+" + rbuild(rng)
    elif rng.random() < 0.01:
        text += "-beta"  # refused by torshpkg: a pre-release on a partial
    known = [nums[i] if i < parts and words[i].isdigit() else 0 for i in range(3)]
    bases.append((known[0], known[1], known[2], pre))
    r = rng.random()
    if r < 0.08:
        text = "v" + text
    elif r < 0.11:
        text = "=" + text
    return text


def rcomparator(rng, bases):
    op = rng.choice(["", "", "^", "^", "~", "~", ">", ">=", "<", "<=", "="])
    if rng.random() < 0.03:
        return op + rng.choice(["*", "x", "X"])
    return op + rpartial(rng, bases)


def ralternative(rng, bases):
    if rng.random() < 0.15:
        sep = rng.choice([" - ", " - ", "  -  "])
        return rpartial(rng, bases) + sep + rpartial(rng, bases)
    count = rng.choice([1, 1, 1, 2, 2, 3])
    return rng.choice([" ", " ", "  "]).join(rcomparator(rng, bases) for _ in range(count))


NOISE = [">= 1.0", "1.x.3", "1.2-beta", "~>1.2", "", "1.2.3 ||", "|| 1", "~ 1", "^ 1.2", "1.2.3.4", "01",
         "1.2.3 - 2.3.4 - 5"]


def rrange(rng, bases):
    if rng.random() < 0.01:
        return rng.choice(NOISE)
    count = 1 if rng.random() < 0.7 else rng.choice([2, 2, 3])
    text = ""
    for i in range(count):
        if i:
            text += rng.choice([" || ", "||", "  ||  ", " ||", "|| "])
        text += ralternative(rng, bases)
    if rng.random() < 0.03:
        text = " " + text + " "
    return text


def generate(rng):
    pairs = []
    for r in TRICKY_RANGES:
        for v in TRICKY_VERSIONS:
            pairs.append((v, r))
    for _ in range(4000):
        bases = []
        r = rrange(rng, bases)
        for _ in range(6):
            base = rng.choice(bases) if bases else None
            pairs.append((rversion(rng, base), r))
    orders = [(a, b) for a in ORDER_CHAIN for b in ORDER_CHAIN]
    pool = [rversion(rng) for _ in range(400)] + TRICKY_VERSIONS
    for _ in range(2000):
        a = rng.choice(pool)
        # Half of them share MAJOR.MINOR.PATCH, so that pre-release comparison is exercised.
        b = rng.choice(pool) if rng.random() < 0.5 else a.split("-")[0].split("+")[0] + (
            "-" + rpre(rng) if rng.random() < 0.8 else "")
        orders.append((a, b))
    return pairs, orders


def shown(text, limit=60):
    """JSON-quoted, with long strings cut short (the length says what was cut)."""
    if len(text) > limit:
        return json.dumps(text[:limit - 20]) + "...(%d chars)" % len(text)
    return json.dumps(text)


def check_field(text):
    if "\t" in text or "\n" in text or "\r" in text:
        raise ValueError("cannot send %r to the probe" % text)


def run_probe(probe, pairs, orders):
    lines = []
    for v, r in pairs:
        check_field(v), check_field(r)
        lines.append("S\t%s\t%s" % (v, r))
    for a, b in orders:
        check_field(a), check_field(b)
        lines.append("C\t%s\t%s" % (a, b))
    done = subprocess.run([probe], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        sys.exit("semver-probe failed (exit %d): %s" % (done.returncode, done.stderr.strip()))
    out = done.stdout.split("\n")
    if out and out[-1] == "":
        out.pop()
    if len(out) != len(lines):
        sys.exit("semver-probe answered %d lines for %d questions" % (len(out), len(lines)))
    return out[:len(pairs)], out[len(pairs):]


def node_env():
    env = dict(os.environ)
    extra = ["/usr/share/nodejs", "/usr/lib/nodejs"]  # Debian's module dirs, which NodeSource's node omits
    env["NODE_PATH"] = os.pathsep.join([p for p in env.get("NODE_PATH", "").split(os.pathsep) if p] + extra)
    return env


def run_node(node, pairs, orders):
    payload = json.dumps({"sat": pairs, "cmp": orders})
    done = subprocess.run([node, "-e", NODE_SCRIPT], input=payload, capture_output=True, text=True, timeout=60,
                          env=node_env())
    if done.returncode == 77:
        print("SKIP: node-semver is not installed (%s)" % done.stderr.strip())
        sys.exit(77)
    if done.returncode != 0:
        sys.exit("node failed (exit %d): %s" % (done.returncode, done.stderr.strip()))
    return json.loads(done.stdout)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: semver_node_check.py PATH-TO-semver-probe")
    probe = sys.argv[1]
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        print("SKIP: node is not installed")
        return 77
    started = time.monotonic()
    pairs, orders = generate(random.Random(SEED))
    answer = run_node(node, pairs, orders)
    ours_sat, ours_cmp = run_probe(probe, pairs, orders)

    failures = []
    errors = [(q, o) for q, o in zip(pairs + orders, ours_sat + ours_cmp) if o.startswith("error")]
    accepted = rejected = node_accepts_our_rejects = 0
    for (v, r), ours, theirs in zip(pairs, ours_sat, answer["sat"]):
        if ours == "invalid":
            rejected += 1
            node_accepts_our_rejects += theirs != "invalid"
            continue
        accepted += 1
        if ours != theirs:
            failures.append(("satisfies", r, v, ours, theirs))
    order_accepted = 0
    for (a, b), ours, theirs in zip(orders, ours_cmp, answer["cmp"]):
        if ours == "invalid":
            continue
        order_accepted += 1
        if ours != theirs:
            failures.append(("compare", a, b, ours, theirs))

    elapsed = time.monotonic() - started
    print("semver-node: node-semver %s (%s); %d pairs checked, %d accepted by us, %d rejected by us "
          "(%d of them accepted by node), %d orderings checked (%d accepted by us), %d disagreements, %.1fs"
          % (answer["version"], answer["path"], len(pairs), accepted, rejected, node_accepts_our_rejects,
             len(orders), order_accepted, len(failures), elapsed))
    for (q, o) in errors[:SHOW]:
        print("probe error on %r: %s" % (q, o))
    if failures:
        # One bug tends to show up in hundreds of pairs: list the first disagreements whose range
        # and version were not listed already.
        listed, seen = [], set()
        for failure in failures:
            if failure[1] not in seen and failure[2] not in seen:
                listed.append(failure)
                seen.update(failure[1:3])
            if len(listed) == SHOW:
                break
        print("first %d of %d disagreements (one per range and per version):" % (len(listed), len(failures)))
        for kind, x, y, ours, theirs in listed:
            if kind == "satisfies":
                print("  range %-34s version %-30s ours %-7s node %s" % (shown(x), shown(y), ours, theirs))
            else:
                print("  compare %-32s with    %-30s ours %-7s node %s" % (shown(x), shown(y), ours, theirs))
    # SEMVER_NODE_DUMP=FILE writes every disagreement there as JSON, for a closer look.
    if os.environ.get("SEMVER_NODE_DUMP"):
        with open(os.environ["SEMVER_NODE_DUMP"], "w") as out:
            json.dump(failures, out, indent=0)
    return 1 if failures or errors else 0


if __name__ == "__main__":
    sys.exit(main())
