// Signature checks and the trust policy over an opened package.
#include "torshpkg/trust_policy.hpp"

#include <sys/stat.h>

#include <fmt/format.h>
#include <algorithm>
#include <cerrno>

#include "torshpkg/errors.hpp"

namespace torshpkg {

LoadedTrust load_trust_store(const std::vector<std::string> &pubkeys, const std::vector<std::string> &dirs) {
  LoadedTrust t;
  const auto record = [&t](const KeyId &id, const std::string &file, const std::string &origin) {
    // TrustStore::add() keeps the first file of a key: list that one only.
    const auto *kept = t.find(id);
    if (!kept || kept->source() != file) return;
    if (std::none_of(t.keys.begin(), t.keys.end(), [&](const auto &k) { return k.id == id; }))
      t.keys.push_back({id, file, origin});
  };
  for (const auto &p : pubkeys) record(t.add_file(p), p, "key file");
  const auto add_dir = [&](const std::string &dir, const std::string &origin) {
    t.searched.push_back(origin);
    // add_dir() refuses directories and keys that others may write; each file is read once.
    for (const auto &[id, file] : t.add_dir(dir)) record(id, file, origin);
  };
  for (const auto &d : dirs) {
    // A directory the user named that is not there is a typo, not "trust nothing".
    struct stat st {};
    if (::stat(d.c_str(), &st) != 0) {
      if (errno == ENOENT || errno == ENOTDIR) throw UsageError(fmt::format("{}: trust directory does not exist", d));
      throw_errno("stat", d);
    }
    add_dir(d, "trust directory " + d);
  }
  if (pubkeys.empty() && dirs.empty()) {
    const std::string d(kDefaultTrustDir);
    struct stat st {};
    if (::stat(d.c_str(), &st) != 0 && errno == ENOENT)
      t.default_missing = true;
    else
      add_dir(d, "default trust directory " + d);
  }
  return t;
}

std::string LoadedTrust::describe() const {
  if (keys.empty()) {
    if (default_missing) return fmt::format("no key is trusted ({} does not exist)", kDefaultTrustDir);
    if (searched.empty()) return "no key is trusted";
    return fmt::format("no key is trusted (no *.pub key in the {})", fmt::join(searched, ", the "));
  }
  constexpr std::size_t kShown = 8;  // one line, however many keys a directory holds
  std::vector<std::string> shown;
  for (std::size_t i = 0; i < keys.size() && i < kShown; ++i)
    shown.push_back(fmt::format("{} from {}", key_id_short(keys[i].id), keys[i].file));
  if (keys.size() > kShown) shown.push_back(fmt::format("+{} more", keys.size() - kShown));
  return fmt::format("trusted key{}: {}", keys.size() > 1 ? "s" : "", fmt::join(shown, ", "));
}

SignatureChecks check_signatures(const Package &pkg, const LoadedTrust &trust) {
  SignatureChecks out;
  static_cast<std::vector<SignatureCheck> &>(out) = check_signatures(pkg, static_cast<const TrustStore &>(trust));
  out.trusted = trust.describe();
  return out;
}

std::vector<SignatureCheck> check_signatures(const Package &pkg, const TrustStore &trust) {
  std::vector<SignatureCheck> out;
  for (const auto &s : pkg.signatures()) {
    SignatureCheck c{s, SignatureCheck::State::kUntrusted, {}};
    if (const auto *key = trust.find(s.key_id)) {
      c.key_source = key->source();
      c.state = key->verifies(pkg.root_digest(), s.signature) ? SignatureCheck::State::kValid
                                                              : SignatureCheck::State::kInvalid;
    }
    out.push_back(std::move(c));
  }
  return out;
}

TrustError unsigned_refusal(std::string_view location, std::string_view because, std::string_view remedy) {
  return TrustError(fmt::format("{} is {}: mount it with -o allow_unsigned, or {}", location, because, remedy));
}

TrustDecision enforce_trust(const Package &pkg, const std::vector<SignatureCheck> &checks, bool allow_untrusted,
                            std::string_view trusted) {
  // A synthesised index (a zip mounted in place) has nothing a signature could cover: it is held to
  // the rule for unsigned packages.
  if (const auto *s = pkg.synthesized()) {
    if (!allow_untrusted) throw unsigned_refusal(pkg.path(), s->unsigned_because, s->remedy);
    return {false, s->summary};
  }
  std::vector<std::string> valid, untrusted;
  for (const auto &c : checks) {
    const auto id = key_id_short(c.entry.key_id);
    switch (c.state) {
      case SignatureCheck::State::kInvalid:
        throw IntegrityError(
            fmt::format("{}: the signature by trusted key {} ({}) does not verify: the package was "
                        "changed after it was signed",
                        pkg.path(), id, c.key_source));
      case SignatureCheck::State::kValid: valid.push_back(fmt::format("{} ({})", id, c.key_source)); break;
      case SignatureCheck::State::kUntrusted: untrusted.push_back(id); break;
    }
  }
  if (!valid.empty()) return {true, fmt::format("signed by trusted key {}", fmt::join(valid, ", "))};
  const std::string why = checks.empty() ? "not signed"
                                         : fmt::format("signed only by untrusted key{} {}",
                                                       untrusted.size() > 1 ? "s" : "", fmt::join(untrusted, ", "));
  if (!allow_untrusted)
    throw TrustError(fmt::format("{} is {}{}{}", pkg.path(), why, trusted.empty() ? "" : "; ", trusted));
  return {false, why};
}

}  // namespace torshpkg
