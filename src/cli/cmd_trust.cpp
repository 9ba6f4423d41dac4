// torshpkg trust add|ls|rm: the public keys of a trust directory (default /etc/torshpkg/trusted.d),
// the keys verify, inspect, resolve and mount.torshpkg accept.
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <optional>

#include "cli.hpp"
#include "torshpkg/digest.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/file.hpp"
#include "torshpkg/signing.hpp"
#include "torshpkg/trust_policy.hpp"

namespace torshpkg::cli {

namespace {

bool exists(const std::string &path, struct stat *st = nullptr) {
  struct stat buf {};
  if (::stat(path.c_str(), st ? st : &buf) == 0) return true;
  if (errno == ENOENT || errno == ENOTDIR) return false;
  throw_errno("stat", path);
}

// mkdir -p with mode 0755 whatever the umask: the trust store refuses directories others may write.
void make_dirs(const std::string &dir) {
  if (dir.empty() || exists(dir)) return;
  if (const auto slash = dir.find_last_of('/'); slash != std::string::npos && slash > 0)
    make_dirs(dir.substr(0, slash));
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) throw_errno("create directory", dir);
  if (::chmod(dir.c_str(), 0755) != 0) throw_errno("chmod", dir);
}

int trust_add(const std::string &key_file, const std::string &dir) {
  const auto key = PublicKey::load(key_file);  // UsageError unless an Ed25519 public key (PEM)
  const std::string id = key_id_short(key.id());
  make_dirs(dir);
  // Also refuses a directory that group or others may write, as every reader of it would.
  const auto trust = load_trust_store({}, {dir});
  if (const auto *k = trust.find(key.id())) {
    fmt::print("{}: already trusted ({})\n", id, k->source());
    return kOk;
  }
  const std::string path = dir + "/" + id + ".pub";
  if (exists(path)) throw UsageError(fmt::format("{} exists and holds another key; not replaced", path));
  const std::string pem = key.pem();  // re-encoded: the file holds exactly the key, nothing else
  TempOutput out(path);
  write_all(out.fd(), std::span(reinterpret_cast<const std::uint8_t *>(pem.data()), pem.size()), out.temp_path());
  if (::fchmod(out.fd(), 0644) != 0) throw_errno("chmod", out.temp_path());
  out.commit();
  fmt::print("{}: trusted ({}, from {})\n", id, path, key_file);
  return kOk;
}

int trust_ls(const TrustArgs &args) {
  const auto trust = load_trust(args);
  if (trust.keys.empty()) {
    fmt::print("{}\n", trust.describe());
    return kOk;
  }
  std::size_t width = 4;
  for (const auto &k : trust.keys) width = std::max(width, k.file.size());
  fmt::print("{:<16}  {:<{}}  {}\n", "KEY ID", "FILE", width, "FROM");
  for (const auto &k : trust.keys) fmt::print("{:<16}  {:<{}}  {}\n", key_id_short(k.id), k.file, width, k.origin);
  return kOk;
}

bool is_hex(std::string_view s) {
  return !s.empty() && s.find_first_not_of("0123456789abcdefABCDEF") == std::string_view::npos;
}

// `what`: a key id (or a prefix of at least 4 hex digits), a file name in `dir`, or a public key
// file anywhere, whose key is removed from `dir` (from every file there that holds it).
int trust_rm(const std::string &what, const std::string &dir) {
  struct stat st {};
  if (!exists(dir, &st)) throw UsageError(fmt::format("{}: trust directory does not exist", dir));
  if (!S_ISDIR(st.st_mode)) throw UsageError(fmt::format("{}: trust directory is not a directory", dir));
  const auto files = trust_dir_files(dir);
  std::vector<std::string> victims;
  if (what.find('/') == std::string::npos && std::find(files.begin(), files.end(), dir + "/" + what) != files.end()) {
    victims.push_back(dir + "/" + what);  // by name, even when the file is not a usable key
  } else {
    std::vector<std::pair<std::string, KeyId>> keys;
    for (const auto &f : files) {
      try {
        keys.emplace_back(f, PublicKey::load(f).id());
      } catch (const UsageError &) {  // not a key: only its name can select it
      }
    }
    std::optional<KeyId> id;
    if (exists(what)) {
      id = PublicKey::load(what).id();
    } else if (is_hex(what) && what.size() >= 4) {
      std::string lower = what;
      for (auto &c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      for (const auto &[f, k] : keys) {
        if (!to_hex(k).starts_with(lower)) continue;
        if (id && *id != k) throw UsageError(fmt::format("key id {} is ambiguous in {}: give more digits", what, dir));
        id = k;
      }
    } else {
      throw UsageError(fmt::format("{}: neither a key id, a file in {} nor a public key file", what, dir));
    }
    for (const auto &[f, k] : keys)
      if (id && k == *id) victims.push_back(f);
    if (victims.empty()) throw UsageError(fmt::format("{}: no such trusted key in {}", what, dir));
  }
  for (const auto &f : victims) {
    if (::unlink(f.c_str()) != 0) throw_errno("remove", f);
    fmt::print("removed {}\n", f);
  }
  return kOk;
}

}  // namespace

void add_trust(CLI::App &app, Action &action) {
  struct Args {
    std::string key, what, dir = std::string(kDefaultTrustDir);
    TrustArgs ls;
  };
  auto a = std::make_shared<Args>();
  auto *cmd = app.add_subcommand(
      "trust", fmt::format("Add, list or remove trusted public keys (the keys of {})", kDefaultTrustDir));
  cmd->require_subcommand(1);
  const auto dir_help = fmt::format("Trust directory (default {})", kDefaultTrustDir);

  auto *add = cmd->add_subcommand("add", "Trust an Ed25519 public key: copy it into the directory as KEYID.pub (0644)");
  add->add_option("KEY", a->key, "Public key file (PEM, as keygen writes NAME.pub)")->required();
  add->add_option("--dir", a->dir, dir_help);
  add->callback([&action, a] { action = [a] { return trust_add(a->key, a->dir); }; });

  auto *ls = cmd->add_subcommand("ls", "List trusted keys: key id, file and where it comes from");
  ls->add_option("--dir,--trust", a->ls.dirs,
                 "List this trust directory (repeatable; default " + std::string(kDefaultTrustDir) + ")")
      ->allow_extra_args(false);
  ls->add_option("--pubkey", a->ls.pubkeys, "Also list this public key file (repeatable)")->allow_extra_args(false);
  ls->callback([&action, a] { action = [a] { return trust_ls(a->ls); }; });

  auto *rm = cmd->add_subcommand("rm", "Stop trusting a key: by key id (or a prefix), file name or public key file");
  rm->add_option("KEY", a->what, "KEYID, KEYID.pub, or a public key file")->required();
  rm->add_option("--dir", a->dir, dir_help);
  rm->callback([&action, a] { action = [a] { return trust_rm(a->what, a->dir); }; });
}

}  // namespace torshpkg::cli
