// torshpkg verify FILE: reads every chunk, checks every digest, names every damaged file.
#include <algorithm>
#include <deque>
#include <fmt/format.h>
#include <set>
#include <thread>
#include <map>

#include "cli.hpp"
#include "torshpkg/open.hpp"
#include "torshpkg/trust_policy.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/pool.hpp"

namespace torshpkg::cli {

namespace {

struct ChunkCheck {
  std::uint64_t index = 0;
  std::string problem;  // empty: fine
};

ChunkCheck check_chunk(const Package &pkg, std::uint64_t index) {
  thread_local std::vector<std::uint8_t> out;  // one per pool thread
  out.resize(pkg.chunk(index).decoded_size);
  try {
    // Without the key, what can be checked is what the digests cover: the sealed bytes.
    if (pkg.locked())
      pkg.check_stored(index);
    else
      pkg.load_chunk(index, out);
    return {index, {}};
  } catch (const IntegrityError &e) {
    return {index, e.what()};
  } catch (const FormatError &e) {
    return {index, e.what()};
  }
}

int verify(const std::string &file, unsigned threads, const TrustArgs &trust_args, const RemoteArgs &remote,
           const KeyArgs &keys) {
  auto opts = open_options(file, remote, keys);
  opts.store = nullptr;  // verify what the server serves, not what a cache holds
  // An encrypted package verifies without its key (digests cover the ciphertext); with one, fully.
  opts.locked = Package::Locked::kAllowed;
  if (!keys.given()) opts.keys = nullptr;
  const auto pkg = open_package(file, opts);  // checks header, footer, root digest and the whole index
  // Signatures first: they vouch for the root, which vouches for every chunk digest.
  const auto checks = check_signatures(*pkg, load_trust(trust_args));
  for (const auto &c : checks)
    fmt::print("{}: signature by {}: {}{}\n", file, to_hex(c.entry.key_id), signature_state_name(c.state),
               c.key_source.empty() ? "" : " (" + c.key_source + ")");
  // Named keys demand a trusted signature; without them the result is reported, not required.
  const auto trust = enforce_trust(*pkg, checks, !trust_args.explicit_trust());
  // Which file owns each chunk: runs are consecutive in inode order.
  std::vector<std::pair<std::uint64_t, std::uint32_t>> owners;
  std::uint64_t files = 0;
  for (std::uint32_t i = 0; i < pkg->inode_count(); ++i) {
    if (pkg->type(i) != format::NodeType::kRegular) continue;
    ++files;
    if (const auto e = pkg->inode(i); e.size) owners.emplace_back(e.first, i);
  }
  // Chunks sharing stored bytes are checked once, under their first chunk (Package::cache_key).
  std::vector<std::uint64_t> unique;
  std::uint64_t total = 0;
  for (std::uint64_t k = 0; k < pkg->chunk_count(); ++k)
    if (pkg->first_use(k)) unique.push_back(k), total += pkg->chunk(k).stored_size;

  ProgressBar bar("verifying");
  ThreadPool pool(threads ? threads : std::max(1u, std::thread::hardware_concurrency()));
  std::deque<std::future<ChunkCheck>> inflight;
  std::map<std::uint64_t, std::string> bad;  // first chunk of the stored bytes -> problem
  std::uint64_t done = 0;
  auto collect = [&] {
    const auto r = inflight.front().get();
    inflight.pop_front();
    const auto c = pkg->chunk(r.index);
    if (!r.problem.empty()) bad.emplace(r.index, r.problem);
    done += c.stored_size;
    bar.update(done, total);
  };
  for (auto k : unique) {
    inflight.push_back(pool.submit([&pkg, k] { return check_chunk(*pkg, k); }));
    if (inflight.size() >= 4 * pool.size()) collect();
  }
  while (!inflight.empty()) collect();
  bar.finish();

  std::set<std::uint32_t> damaged;
  for (std::uint64_t k = 0; k < pkg->chunk_count() && !bad.empty(); ++k) {
    if (!bad.count(pkg->cache_key(k))) continue;
    const auto it = std::upper_bound(owners.begin(), owners.end(), std::make_pair(k, UINT32_MAX));
    damaged.insert(std::prev(it)->second);
  }
  for (auto ino : damaged)
    fmt::print(stderr, "DAMAGED {}\n",
               pkg->names_hidden() ? fmt::format("(file inode {}, name sealed)", ino) : pkg->path_of(ino));
  for (const auto &[k, why] : bad) fmt::print(stderr, "  chunk at offset {}: {}\n", pkg->chunk(k).offset, why);
  if (!damaged.empty()) {
    fmt::print("{}: {} of {} files damaged\n", file, damaged.size(), files);
    return kIntegrity;
  }
  fmt::print("{}: OK ({} chunks, {} files, root sha256 {}; {}{})\n", file, pkg->chunk_count(), files,
             to_hex(pkg->root_digest()), trust.summary,
             pkg->locked()      ? "; encrypted: sealed bytes checked, nothing decrypted (no key given)"
             : pkg->encrypted() ? "; encrypted: decrypted and decoded"
                                : "");
  return kOk;
}

}  // namespace

void add_verify(CLI::App &app, Action &action) {
  auto file = std::make_shared<std::string>();
  auto threads = std::make_shared<unsigned>(0);
  auto trust = std::make_shared<TrustArgs>();
  auto remote = std::make_shared<RemoteArgs>();
  auto keys = std::make_shared<KeyArgs>();
  auto *cmd = app.add_subcommand("verify", "Check signatures, the index and every chunk digest; name damaged files");
  cmd->add_option("FILE", *file, "Package")->required();
  cmd->add_option("--threads", *threads, "Verification threads (default: one per core)");
  add_trust_options(cmd, *trust);
  add_remote_options(cmd, *remote);
  add_key_options(cmd, *keys);
  cmd->callback([&action, file, threads, trust, remote, keys] {
    action = [file, threads, trust, remote, keys] { return verify(*file, *threads, *trust, *remote, *keys); };
  });
}

}  // namespace torshpkg::cli
