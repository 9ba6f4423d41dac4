// Signatures of an opened package checked against a trust store, and the one trust policy for the
// driver and the CLI.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "torshpkg/errors.hpp"
#include "torshpkg/package.hpp"
#include "torshpkg/signing.hpp"

namespace torshpkg {

struct SignatureCheck {
  enum class State { kValid, kInvalid, kUntrusted };  // kUntrusted: the key is not in the store
  SignatureEntry entry;
  State state = State::kUntrusted;
  std::string key_source;  // file of the trusted key, when found
};
[[nodiscard]] std::vector<SignatureCheck> check_signatures(const Package &pkg, const TrustStore &trust);

// A key of a LoadedTrust and where it came from.
struct TrustedKey {
  KeyId id{};
  std::string file;    // the .pub file it was read from
  std::string origin;  // "key file", "trust directory DIR" or "default trust directory DIR"
};
// A TrustStore that can also say what it holds (TrustStore itself only answers find()): for
// `torshpkg trust ls` and for the refusal of an untrusted package, which names the trusted keys.
struct LoadedTrust : TrustStore {
  std::vector<TrustedKey> keys;       // in load order, one per distinct key
  std::vector<std::string> searched;  // the directories read, as origins ("trust directory /k")
  bool default_missing = false;       // the default directory was used and does not exist
  // "trusted keys: ID from FILE, ..." or "no key is trusted (...)": the tail of a refusal.
  [[nodiscard]] std::string describe() const;
};
// TrustStore::from()'s rule (the named key files and directories, else the default directory,
// which may be missing), except that a directory named explicitly must exist: `--trust /typo`
// (or -o trust=/typo) is a UsageError, not a store without keys.
[[nodiscard]] LoadedTrust load_trust_store(const std::vector<std::string> &pubkeys,
                                           const std::vector<std::string> &dirs);

// check_signatures() over a LoadedTrust: the checks, and who was trusted, for enforce_trust().
struct SignatureChecks : std::vector<SignatureCheck> {
  std::string trusted;  // LoadedTrust::describe()
};
[[nodiscard]] SignatureChecks check_signatures(const Package &pkg, const LoadedTrust &trust);

// The policy, in one place for the driver and the CLI. Throws IntegrityError when a trusted key's
// signature does not verify (the package changed after signing), and TrustError when no trusted
// key signed it, unless `allow_untrusted`.
struct TrustDecision {
  bool trusted = false;  // a trusted key's signature verified
  std::string summary;   // "signed by trusted key ...", "not signed", "signed only by untrusted key ..."
};
// `trusted` (LoadedTrust::describe()), when given, ends the TrustError's message.
TrustDecision enforce_trust(const Package &pkg, const std::vector<SignatureCheck> &checks, bool allow_untrusted,
                            std::string_view trusted = {});
inline TrustDecision enforce_trust(const Package &pkg, const SignatureChecks &checks, bool allow_untrusted) {
  return enforce_trust(pkg, checks, allow_untrusted, checks.trusted);
}

// The refusal of a package that cannot be signed (a zip mounted in place) where unsigned ones are
// not allowed.
[[nodiscard]] TrustError unsigned_refusal(std::string_view location, std::string_view because, std::string_view remedy);

}  // namespace torshpkg
