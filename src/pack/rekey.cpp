// `torshpkg rekey`: the content key wrapped anew for a changed set of recipients; only the key
// block and the footer at the tail are rewritten (replace_tail in sign.cpp).
#include <fmt/format.h>
#include <algorithm>

#include "tail.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/writer.hpp"

namespace torshpkg {

std::size_t rekey_package(const std::string &path, const KeyRing &keys, const RekeyOptions &opts,
                          const std::string &output) {
  const auto probe = Package::open(path, ChunkDigests::kVerify, nullptr, Package::Locked::kAllowed);
  if (!probe->encrypted()) throw UsageError(path + ": not encrypted; rekey changes who can open an encrypted package");
  // The content key: unwrapped from the current block with the caller's key, checked against the header.
  const auto found = unwrap(probe->key_stanzas(), keys, probe->header().key_check);
  if (!found) probe->require_key();
  std::vector<KeyStanza> stanzas;
  for (const auto &s : probe->key_stanzas()) {
    if (s.type == StanzaType::kScrypt && opts.remove_passphrases) continue;
    const bool removed =
        std::any_of(opts.remove.begin(), opts.remove.end(), [&](const PublicKey &k) { return k.id() == s.id; });
    if (s.type == StanzaType::kX25519 && removed) continue;
    stanzas.push_back(s);
  }
  for (const auto &k : opts.remove) {
    const bool present = std::any_of(probe->key_stanzas().begin(), probe->key_stanzas().end(), [&](const KeyStanza &s) {
      return s.type == StanzaType::kX25519 && s.id == k.id();
    });
    if (!present)
      throw UsageError(fmt::format("{}: {} is not a recipient of this package", k.source(), key_id_short(k.id())));
  }
  for (const auto &k : opts.add) {
    const bool present = std::any_of(stanzas.begin(), stanzas.end(), [&](const KeyStanza &s) {
      return s.type == StanzaType::kX25519 && s.id == k.id();
    });
    if (!present) stanzas.push_back(wrap_for(k, found->key));
  }
  for (const auto &p : opts.add_passphrases) stanzas.push_back(wrap_for_passphrase(p, found->key, opts.scrypt_log_n));
  if (stanzas.empty()) throw UsageError("rekey would leave nobody able to open the package");
  std::vector<std::uint8_t> blocks = encode_key_block(stanzas);
  const auto signatures = encode_signature_block(probe->signatures());
  blocks.insert(blocks.end(), signatures.begin(), signatures.end());
  replace_tail(*probe, path, blocks, output);
  return stanzas.size();
}

}  // namespace torshpkg
