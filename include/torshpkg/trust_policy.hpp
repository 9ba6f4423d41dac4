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

// The policy, in one place for the driver and the CLI. Throws IntegrityError when a trusted key's
// signature does not verify (the package changed after signing), and TrustError when no trusted
// key signed it, unless `allow_untrusted`.
struct TrustDecision {
  bool trusted = false;  // a trusted key's signature verified
  std::string summary;   // "signed by trusted key ...", "not signed", "signed only by untrusted key ..."
};
TrustDecision enforce_trust(const Package &pkg, const std::vector<SignatureCheck> &checks, bool allow_untrusted);

// The refusal of a package that cannot be signed (a zip mounted in place) where unsigned ones are
// not allowed.
[[nodiscard]] TrustError unsigned_refusal(std::string_view location, std::string_view because, std::string_view remedy);

}  // namespace torshpkg
