// torshpkg-decode-bench PKG [--repeat N] [--no-digest] [--json]
//
// Single-core decode throughput of a package, per codec/filter group (zstd+bf16, zstd+none, stored,
// ...). Every distinct stored chunk is read into memory and its digest checked first, so neither
// I/O nor the page cache is timed; then all chunks are decoded on this one thread, N times, group
// after group within each round (so that a noisy neighbour hits every group alike). The SHA-256 a
// reader checks before decoding is timed separately, because it costs the same whatever the codec.
//
// Rates are decoded bytes (10^6 per MB) per CPU-second of this thread (CLOCK_THREAD_CPUTIME_ID),
// which stays meaningful on a shared, loaded machine; wall-clock rates are in the JSON too.
// With --json, stdout is one JSON object and the human table goes to stderr.
#include <time.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fmt/format.h>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "torshpkg/codec.hpp"
#include "torshpkg/pipeline.hpp"
#include "torshpkg/digest.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/file.hpp"
#include "torshpkg/filter.hpp"
#include "torshpkg/package.hpp"

namespace {

using torshpkg::format::ChunkEntry;

constexpr double kMB = 1e6;

struct Options {
  std::string package;
  unsigned repeat = 5;
  bool digest = true;
  bool json = false;
};

struct Sample {
  double cpu = 0, wall = 0;  // seconds
};

double clock_seconds(clockid_t id) {
  timespec ts{};
  ::clock_gettime(id, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// Times fn() in CPU time of the calling thread and in wall time.
template <typename Fn>
Sample timed(Fn &&fn) {
  const double c0 = clock_seconds(CLOCK_THREAD_CPUTIME_ID), w0 = clock_seconds(CLOCK_MONOTONIC);
  fn();
  return {clock_seconds(CLOCK_THREAD_CPUTIME_ID) - c0, clock_seconds(CLOCK_MONOTONIC) - w0};
}

struct Chunk {
  ChunkEntry entry;
  std::vector<std::uint8_t> stored;
};

struct Group {
  std::vector<const Chunk *> chunks;
  std::uint64_t decoded = 0, stored = 0;
  std::vector<Sample> decode, digest;  // one per round
};

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::vector<double> pick(const std::vector<Sample> &s, double Sample::*field) {
  std::vector<double> out;
  out.reserve(s.size());
  for (const auto &x : s) out.push_back(x.*field);
  return out;
}

// decoded bytes per second (MB/s); 0 when nothing was timed
double rate(std::uint64_t bytes, double seconds) {
  return seconds > 0 ? static_cast<double>(bytes) / seconds / kMB : 0;
}

std::string group_name(const ChunkEntry &c) {
  if (c.codec == torshpkg::format::Codec::kStored) return "stored";
  return fmt::format("{}+{}", torshpkg::codec_name(c.codec), torshpkg::filter_name(c.filter));
}

[[noreturn]] void usage(int status) {
  std::fputs(
      "usage: torshpkg-decode-bench PKG [--repeat N] [--no-digest] [--json]\n"
      "  Decodes every stored chunk of PKG on one thread, N times (default 5), from memory, and prints\n"
      "  per codec/filter group the median decode MB/s per core (CPU time) and the SHA-256 cost.\n"
      "  --no-digest  do not time the digest\n"
      "  --json       print one JSON object on stdout (the table goes to stderr)\n",
      status ? stderr : stdout);
  std::exit(status);
}

Options parse_args(int argc, char **argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "-h" || a == "--help") usage(0);
    if (a == "--no-digest") {
      o.digest = false;
    } else if (a == "--json") {
      o.json = true;
    } else if (a == "--repeat" || a.starts_with("--repeat=")) {
      std::string_view v;
      if (a == "--repeat") {
        if (++i >= argc) usage(2);
        v = argv[i];
      } else {
        v = a.substr(a.find('=') + 1);
      }
      const auto r = std::from_chars(v.data(), v.data() + v.size(), o.repeat);
      if (r.ec != std::errc{} || r.ptr != v.data() + v.size() || o.repeat < 1 || o.repeat > 1000) {
        fmt::print(stderr, "torshpkg-decode-bench: --repeat '{}' is not a number from 1 to 1000\n", v);
        std::exit(2);
      }
    } else if (a.starts_with("-") || !o.package.empty()) {
      usage(2);
    } else {
      o.package = a;
    }
  }
  if (o.package.empty()) usage(2);
  return o;
}

// Reads every distinct stored chunk (chunks deduplicated by offset are decoded once, like the
// reader's cache does) and checks its digest, untimed.
std::vector<Chunk> load_chunks(const torshpkg::Package &pkg) {
  const auto fd = torshpkg::open_read(pkg.path());
  std::unordered_set<std::uint64_t> seen;
  std::vector<Chunk> out;
  for (std::uint64_t k = 0; k < pkg.chunk_count(); ++k) {
    Chunk c{pkg.chunk(k), {}};
    if (!seen.insert(c.entry.offset).second) continue;
    c.stored.resize(c.entry.stored_size);
    torshpkg::pread_exact(fd.get(), c.stored, c.entry.offset, pkg.path());
    if (torshpkg::sha256(c.stored) != c.entry.digest)
      throw torshpkg::IntegrityError(fmt::format("chunk {} fails its SHA-256 digest", k));
    out.push_back(std::move(c));
  }
  return out;
}

struct Row {
  std::string name;
  std::uint64_t chunks = 0, decoded = 0, stored = 0;
  std::vector<Sample> decode, digest;
};

nlohmann::ordered_json row_json(const Row &r, bool digest) {
  const double dec_cpu = median(pick(r.decode, &Sample::cpu)), dec_wall = median(pick(r.decode, &Sample::wall));
  nlohmann::ordered_json j;
  j["chunks"] = r.chunks;
  j["decoded_bytes"] = r.decoded;
  j["stored_bytes"] = r.stored;
  j["stored_ratio"] = r.decoded ? static_cast<double>(r.stored) / static_cast<double>(r.decoded) : 1.0;
  j["decode_MBps"] = rate(r.decoded, dec_cpu);
  j["decode_wall_MBps"] = rate(r.decoded, dec_wall);
  j["decode_cpu_s"] = pick(r.decode, &Sample::cpu);
  j["decode_wall_s"] = pick(r.decode, &Sample::wall);
  if (digest) {
    const double dig_cpu = median(pick(r.digest, &Sample::cpu));
    j["digest_MBps"] = rate(r.decoded, dig_cpu);
    j["digest_stored_MBps"] = rate(r.stored, dig_cpu);
    j["decode_digest_MBps"] = rate(r.decoded, dec_cpu + dig_cpu);
    j["digest_cpu_s"] = pick(r.digest, &Sample::cpu);
    j["digest_wall_s"] = pick(r.digest, &Sample::wall);
  }
  return j;
}

void print_table(std::FILE *out, const torshpkg::Package &pkg, const Options &o, std::uint64_t unique,
                 const std::vector<Row> &rows) {
  fmt::print(out, "{}: {} chunks of {} KiB ({} stored once), 1 thread, median of {} round(s)\n", pkg.path(),
             pkg.chunk_count(), pkg.chunk_size() >> 10, unique, o.repeat);
  fmt::print(out, "MB/s = 10^6 decoded bytes per CPU-second of the decoding thread; digest = SHA-256 of the "
                  "stored bytes, per decoded byte\n\n");
  fmt::print(out, "| {:<12} | {:>7} | {:>12} | {:>14} | {:>11} | {:>11} | {:>15} |\n", "group", "chunks",
             "decoded MiB", "stored/decoded", "decode MB/s", "digest MB/s", "dec+digest MB/s");
  fmt::print(out, "|{:-<14}|{:->8}:|{:->13}:|{:->15}:|{:->12}:|{:->12}:|{:->16}:|\n", "", "", "", "", "", "", "");
  for (const auto &r : rows) {
    const auto j = row_json(r, o.digest);
    auto num = [&](const char *key) {
      return j.contains(key) ? fmt::format("{:.0f}", j[key].get<double>()) : std::string("-");
    };
    fmt::print(out, "| {:<12} | {:>7} | {:>12.1f} | {:>14.3f} | {:>11} | {:>11} | {:>15} |\n", r.name, r.chunks,
               static_cast<double>(r.decoded) / (1 << 20), j["stored_ratio"].get<double>(), num("decode_MBps"),
               num("digest_MBps"), num("decode_digest_MBps"));
  }
}

int run(const Options &o) {
  const auto pkg = torshpkg::Package::open(o.package);
  const std::vector<Chunk> chunks = load_chunks(*pkg);

  std::map<std::string, Group> groups;  // sorted by name: stable output order
  std::uint32_t largest = 0;
  for (const auto &c : chunks) {
    auto &g = groups[group_name(c.entry)];
    g.chunks.push_back(&c);
    g.decoded += c.entry.decoded_size;
    g.stored += c.entry.stored_size;
    largest = std::max(largest, c.entry.decoded_size);
  }

  // One decoder and one output buffer, reused like a reader thread's; the first (untimed) round
  // also faults the buffer in and proves every chunk decodes.
  torshpkg::ChunkDecoder decoder;
  std::vector<std::uint8_t> out(largest);
  auto decode_all = [&](const Group &g) {
    for (const Chunk *c : g.chunks)
      decoder.decode(c->entry.codec, c->entry.filter, c->stored, std::span(out).first(c->entry.decoded_size));
  };
  std::uint8_t sink = 0;  // keeps the digests observable
  auto digest_all = [&](const Group &g) {
    for (const Chunk *c : g.chunks) sink ^= torshpkg::sha256(c->stored)[0];
  };
  for (const auto &[name, g] : groups) decode_all(g);

  for (unsigned round = 0; round < o.repeat; ++round) {
    for (auto &[name, g] : groups) {
      g.decode.push_back(timed([&] { decode_all(g); }));
      if (o.digest) g.digest.push_back(timed([&] { digest_all(g); }));
    }
  }

  std::vector<Row> rows;
  Row total{"all", 0, 0, 0, std::vector<Sample>(o.repeat), std::vector<Sample>(o.digest ? o.repeat : 0)};
  for (const auto &[name, g] : groups) {
    rows.push_back({name, g.chunks.size(), g.decoded, g.stored, g.decode, g.digest});
    total.chunks += g.chunks.size(), total.decoded += g.decoded, total.stored += g.stored;
    // The total of a round is the sum of that round's group times.
    for (unsigned r = 0; r < o.repeat; ++r) {
      total.decode[r].cpu += g.decode[r].cpu, total.decode[r].wall += g.decode[r].wall;
      if (o.digest) total.digest[r].cpu += g.digest[r].cpu, total.digest[r].wall += g.digest[r].wall;
    }
  }
  if (rows.size() != 1) rows.push_back(total);

  print_table(o.json ? stderr : stdout, *pkg, o, chunks.size(), rows);
  if (o.json) {
    nlohmann::ordered_json j;
    j["package"] = pkg->path();
    j["chunk_size"] = pkg->chunk_size();
    j["chunks"] = pkg->chunk_count();
    j["unique_chunks"] = chunks.size();
    j["repeat"] = o.repeat;
    j["threads"] = 1;
    j["clock"] = "thread_cputime";
    auto gj = nlohmann::ordered_json::object();
    for (const auto &r : rows)
      if (r.name != "all") gj[r.name] = row_json(r, o.digest);
    j["groups"] = std::move(gj);
    j["total"] = row_json(total, o.digest);
    j["digest_sink"] = sink;
    fmt::print("{}\n", j.dump(1));
  }
  return 0;
}

}  // namespace

int main(int argc, char **argv) {
  const Options o = parse_args(argc, argv);
  try {
    return run(o);
  } catch (const std::exception &e) {
    fmt::print(stderr, "torshpkg-decode-bench: {}\n", e.what());
    return 1;
  }
}
