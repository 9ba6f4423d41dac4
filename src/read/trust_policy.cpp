// Signature checks and the trust policy over an opened package.
#include "torshpkg/trust_policy.hpp"

#include <fmt/format.h>

#include "torshpkg/errors.hpp"

namespace torshpkg {

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

TrustDecision enforce_trust(const Package &pkg, const std::vector<SignatureCheck> &checks, bool allow_untrusted) {
  // A synthesised index (a zip mounted in place) has nothing a signature could cover: it is held to
  // the rule for unsigned packages.
  if (const auto *s = pkg.synthesized()) {
    if (!allow_untrusted)
      throw unsigned_refusal(pkg.path(), s->unsigned_because, s->remedy);
    return {false, s->summary};
  }
  std::vector<std::string> valid, untrusted;
  for (const auto &c : checks) {
    const auto id = key_id_short(c.entry.key_id);
    switch (c.state) {
      case SignatureCheck::State::kInvalid:
        throw IntegrityError(fmt::format("{}: the signature by trusted key {} ({}) does not verify: the package was "
                                         "changed after it was signed",
                                         pkg.path(), id, c.key_source));
      case SignatureCheck::State::kValid: valid.push_back(fmt::format("{} ({})", id, c.key_source)); break;
      case SignatureCheck::State::kUntrusted: untrusted.push_back(id); break;
    }
  }
  if (!valid.empty()) return {true, fmt::format("signed by trusted key {}", fmt::join(valid, ", "))};
  const std::string why = checks.empty() ? "not signed"
                                         : fmt::format("signed only by untrusted key{} {}", untrusted.size() > 1 ? "s" : "",
                                                       fmt::join(untrusted, ", "));
  if (!allow_untrusted) throw TrustError(fmt::format("{} is {}", pkg.path(), why));
  return {false, why};
}

}  // namespace torshpkg
