#include "torshpkg/crypt.hpp"

#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <climits>
#include <cstring>

#include "block.hpp"
#include "openssl.hpp"
#include "torshpkg/endian.hpp"
#include "torshpkg/errors.hpp"

namespace torshpkg {

namespace {

using openssl::api;

constexpr std::size_t kBlock = 64;  // SHA-256's block

void wipe(void *p, std::size_t n) noexcept {
  // The table may be unloadable (no libcrypto.so.3): fall back to a volatile loop then.
  try {
    api().OPENSSL_cleanse(p, n);
  } catch (...) {
    auto *v = static_cast<volatile std::uint8_t *>(p);
    for (std::size_t i = 0; i < n; ++i) v[i] = 0;
  }
}

int int_size(std::size_t n) {
  if (n > static_cast<std::size_t>(INT_MAX)) throw InternalError("AES-GCM: input too large");
  return static_cast<int>(n);
}

// One AES-256-GCM operation. Chunks are at most 4 MiB + a zstd bound, far below GCM's 64 GiB.
void gcm_seal(std::span<const std::uint8_t, crypt::kKeySize> key, std::span<const std::uint8_t> nonce,
              std::span<const std::uint8_t> aad, std::span<const std::uint8_t> plain, std::uint8_t *ct,
              std::uint8_t *tag) {
  openssl::UniqueCipherCtx ctx(api().EVP_CIPHER_CTX_new());
  int n = 0;
  if (!ctx || api().EVP_EncryptInit_ex(ctx.get(), api().EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      api().EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, int_size(nonce.size()), nullptr) != 1 ||
      api().EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, key.data(), nonce.data()) != 1 ||
      (!aad.empty() && api().EVP_EncryptUpdate(ctx.get(), nullptr, &n, aad.data(), int_size(aad.size())) != 1) ||
      (!plain.empty() && api().EVP_EncryptUpdate(ctx.get(), ct, &n, plain.data(), int_size(plain.size())) != 1) ||
      api().EVP_EncryptFinal_ex(ctx.get(), ct + plain.size(), &n) != 1 ||
      api().EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, crypt::kTagSize, tag) != 1)
    throw InternalError("OpenSSL: AES-256-GCM encryption failed: " + openssl::error_text());
}

// False when the tag does not check; `out` then holds nothing anyone may use.
bool gcm_open(std::span<const std::uint8_t, crypt::kKeySize> key, std::span<const std::uint8_t> nonce,
              std::span<const std::uint8_t> aad, std::span<const std::uint8_t> ct, const std::uint8_t *tag,
              std::uint8_t *out) {
  openssl::UniqueCipherCtx ctx(api().EVP_CIPHER_CTX_new());
  int n = 0;
  std::array<std::uint8_t, crypt::kTagSize> tag_copy{};
  std::memcpy(tag_copy.data(), tag, tag_copy.size());  // the ctrl takes a non-const pointer
  if (!ctx || api().EVP_DecryptInit_ex(ctx.get(), api().EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      api().EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, int_size(nonce.size()), nullptr) != 1 ||
      api().EVP_DecryptInit_ex(ctx.get(), nullptr, nullptr, key.data(), nonce.data()) != 1 ||
      (!aad.empty() && api().EVP_DecryptUpdate(ctx.get(), nullptr, &n, aad.data(), int_size(aad.size())) != 1) ||
      (!ct.empty() && api().EVP_DecryptUpdate(ctx.get(), out, &n, ct.data(), int_size(ct.size())) != 1) ||
      api().EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, crypt::kTagSize, tag_copy.data()) != 1)
    throw InternalError("OpenSSL: AES-256-GCM decryption failed: " + openssl::error_text());
  const bool ok = api().EVP_DecryptFinal_ex(ctx.get(), out + ct.size(), &n) == 1;
  api().ERR_clear_error();
  return ok;
}

template <std::size_t N>
std::array<std::uint8_t, N> derive(std::span<const std::uint8_t> secret, std::string_view info,
                                   std::span<const std::uint8_t> salt = {}) {
  auto v = hkdf_sha256(salt, secret, info, N);
  std::array<std::uint8_t, N> out{};
  std::copy(v.begin(), v.end(), out.begin());
  wipe(v.data(), v.size());
  return out;
}

constexpr std::string_view kWrapAad = "torshpkg-wrap-v1";
constexpr std::array<std::uint8_t, crypt::kNonceSize> kZeroNonce{};  // each wrapping key is used once

KeyStanza wrapped_with(KeyStanza s, std::span<const std::uint8_t, crypt::kKeySize> wrap_key, const ContentKey &key) {
  gcm_seal(wrap_key, kZeroNonce, as_bytes(kWrapAad), key.bytes(), s.wrapped.data(), s.wrapped.data() + crypt::kKeySize);
  return s;
}

std::optional<ContentKey> unwrapped_with(const KeyStanza &s, std::span<const std::uint8_t, crypt::kKeySize> wrap_key) {
  std::array<std::uint8_t, crypt::kKeySize> k{};
  if (!gcm_open(wrap_key, kZeroNonce, as_bytes(kWrapAad), std::span(s.wrapped).first<crypt::kKeySize>(),
                s.wrapped.data() + crypt::kKeySize, k.data()))
    return std::nullopt;
  ContentKey key(k);
  wipe(k.data(), k.size());
  return key;
}

// The X25519 wrapping key shared by the holder of `priv` and of `peer`'s private key; salted with
// both public keys (ephemeral first), so a stanza is bound to its recipient.
std::optional<std::array<std::uint8_t, crypt::kKeySize>> x25519_wrap_key(
    EVP_PKEY *priv, EVP_PKEY *peer, std::span<const std::uint8_t, 32> ephemeral_pub,
    std::span<const std::uint8_t, 32> recipient_pub) {
  openssl::UniquePkeyCtx ctx(api().EVP_PKEY_CTX_new(priv, nullptr));
  std::array<std::uint8_t, 32> shared{};
  std::size_t len = shared.size();
  if (!ctx || api().EVP_PKEY_derive_init(ctx.get()) != 1)
    throw InternalError("OpenSSL: X25519: " + openssl::error_text());
  // A low-order peer key (all-zero secret) is refused here: it opens nothing.
  if (api().EVP_PKEY_derive_set_peer(ctx.get(), peer) != 1 ||
      api().EVP_PKEY_derive(ctx.get(), shared.data(), &len) != 1 || len != shared.size()) {
    api().ERR_clear_error();
    return std::nullopt;
  }
  std::array<std::uint8_t, 64> salt{};
  std::copy(ephemeral_pub.begin(), ephemeral_pub.end(), salt.begin());
  std::copy(recipient_pub.begin(), recipient_pub.end(), salt.begin() + 32);
  auto k = derive<crypt::kKeySize>(shared, "torshpkg-x25519-v1", salt);
  wipe(shared.data(), shared.size());
  return k;
}

std::array<std::uint8_t, crypt::kKeySize> scrypt_wrap_key(std::string_view passphrase,
                                                          std::span<const std::uint8_t, 16> salt, unsigned log_n) {
  constexpr std::uint64_t r = 8, p = 1;
  const std::uint64_t n = std::uint64_t{1} << log_n;
  std::array<std::uint8_t, crypt::kKeySize> k{};
  const std::uint64_t maxmem = 128 * r * n + (16u << 20);
  if (api().EVP_PBE_scrypt(passphrase.data(), passphrase.size(), salt.data(), salt.size(), n, r, p, maxmem, k.data(),
                           k.size()) != 1)
    throw InternalError(fmt::format("OpenSSL: scrypt (2^{}) failed: {}", log_n, openssl::error_text()));
  return k;
}

std::array<std::uint8_t, 32> random_bytes32() {
  std::array<std::uint8_t, 32> b{};
  if (api().RAND_bytes(b.data(), static_cast<int>(b.size())) != 1)
    throw InternalError("OpenSSL: no random bytes: " + openssl::error_text());
  return b;
}

}  // namespace

// ---- HMAC, HKDF ----

Digest hmac_sha256(std::span<const std::uint8_t> key, std::span<const std::uint8_t> message) {
  return hmac_sha256(key, {message});
}

Digest hmac_sha256(std::span<const std::uint8_t> key, std::initializer_list<std::span<const std::uint8_t>> message) {
  std::array<std::uint8_t, kBlock> k{};
  if (key.size() > kBlock) {
    const auto d = sha256(key);
    std::copy(d.begin(), d.end(), k.begin());
  } else {
    std::copy(key.begin(), key.end(), k.begin());
  }
  std::array<std::uint8_t, kBlock> pad{};
  Sha256 h;
  for (std::size_t i = 0; i < kBlock; ++i) pad[i] = k[i] ^ 0x36;
  h.update(pad);
  for (const auto part : message) h.update(part);
  const Digest inner = h.finish();
  for (std::size_t i = 0; i < kBlock; ++i) pad[i] = k[i] ^ 0x5c;
  h.update(pad);
  h.update(inner);
  wipe(k.data(), k.size());
  wipe(pad.data(), pad.size());
  return h.finish();
}

std::vector<std::uint8_t> hkdf_sha256(std::span<const std::uint8_t> salt, std::span<const std::uint8_t> secret,
                                      std::string_view info, std::size_t length) {
  if (length > 255 * 32) throw InternalError("HKDF: output too long");
  const std::array<std::uint8_t, 32> zero_salt{};
  Digest prk = hmac_sha256(salt.empty() ? std::span<const std::uint8_t>(zero_salt) : salt, secret);
  std::vector<std::uint8_t> out;
  std::vector<std::uint8_t> block;
  Digest t{};
  for (std::uint8_t i = 1; out.size() < length; ++i) {
    block.assign(out.empty() ? t.end() : t.begin(), t.end());
    block.insert(block.end(), info.begin(), info.end());
    block.push_back(i);
    t = hmac_sha256(prk, block);
    out.insert(out.end(), t.begin(),
               t.begin() + static_cast<std::ptrdiff_t>(std::min<std::size_t>(32, length - out.size())));
  }
  wipe(prk.data(), prk.size());
  wipe(t.data(), t.size());
  if (!block.empty()) wipe(block.data(), block.size());
  return out;
}

// ---- content key, sealing ----

ContentKey ContentKey::generate() {
  auto b = random_bytes32();
  ContentKey k(b);
  wipe(b.data(), b.size());
  return k;
}

ContentKey::ContentKey(std::span<const std::uint8_t, crypt::kKeySize> bytes) noexcept {
  std::copy(bytes.begin(), bytes.end(), bytes_.begin());
}

ContentKey::~ContentKey() {
  wipe(bytes_.data(), bytes_.size());
}

std::array<std::uint8_t, crypt::kKeyCheckSize> ContentKey::check() const {
  return derive<crypt::kKeyCheckSize>(bytes_, "torshpkg-key-check-v1");
}

Sealer::Sealer(const ContentKey &key)
    : cipher_key_(derive<crypt::kKeySize>(key.bytes(), "torshpkg-aes-256-gcm-v1")),
      nonce_key_(derive<crypt::kKeySize>(key.bytes(), "torshpkg-synthetic-nonce-v1")) {}

Sealer::~Sealer() {
  wipe(cipher_key_.data(), cipher_key_.size());
  wipe(nonce_key_.data(), nonce_key_.size());
}

void Sealer::seal(std::span<const std::uint8_t> aad, std::span<const std::uint8_t> plain,
                  std::vector<std::uint8_t> &out) const {
  // The nonce binds the aad too, with its length first: (aad, plain) pairs cannot collide by shifting bytes.
  std::array<std::uint8_t, 8> aad_size{};
  store_le<std::uint64_t>(aad_size.data(), aad.size());
  const Digest mac = hmac_sha256(nonce_key_, {aad_size, aad, plain});  // no copy of the chunk
  out.resize(plain.size() + crypt::kOverhead);
  std::copy_n(mac.begin(), crypt::kNonceSize, out.begin());
  gcm_seal(cipher_key_, std::span(out).first(crypt::kNonceSize), aad, plain, out.data() + crypt::kNonceSize,
           out.data() + crypt::kNonceSize + plain.size());
}

void Sealer::open(std::span<const std::uint8_t> aad, std::span<const std::uint8_t> sealed,
                  std::span<std::uint8_t> out) const {
  if (sealed.size() < crypt::kOverhead || out.size() != sealed.size() - crypt::kOverhead)
    throw IntegrityError("sealed bytes too short");
  const auto nonce = sealed.first(crypt::kNonceSize);
  std::array<std::uint8_t, crypt::kNonceSize> nonce_copy{};  // `out` may overlap the nonce's neighbours
  std::copy(nonce.begin(), nonce.end(), nonce_copy.begin());
  const auto ct = sealed.subspan(crypt::kNonceSize, out.size());
  std::array<std::uint8_t, crypt::kTagSize> tag{};
  std::copy_n(sealed.end() - crypt::kTagSize, crypt::kTagSize, tag.begin());
  if (!gcm_open(cipher_key_, nonce_copy, aad, ct, tag.data(), out.data())) {
    wipe(out.data(), out.size());
    throw IntegrityError("does not decrypt: its authentication tag does not match (damaged or forged)");
  }
}

std::array<std::uint8_t, 16> chunk_aad(std::uint8_t codec, std::uint8_t filter, std::uint32_t decoded_size) noexcept {
  std::array<std::uint8_t, 16> a{'t', 'p', 'k', 'g', '-', 'c', 'h', 'u', 'n', 'k', 0, 0, 0, 0, 0, 0};
  a[10] = codec;
  a[11] = filter;
  store_le<std::uint32_t>(&a[12], decoded_size);
  return a;
}

// ---- key block ----

namespace {
const block::Shape kKeyBlock{"key block", keyblock::kMagic, keyblock::kVersion, keyblock::kEntrySize,
                             keyblock::kMaxEntries};
}  // namespace

std::pair<std::vector<KeyStanza>, std::size_t> parse_key_block(std::span<const std::uint8_t> tail) {
  if (tail.empty()) throw FormatError("encrypted package without a key block");
  const auto [count, size] = block::parse_header(tail, kKeyBlock);
  if (tail.size() < size) throw FormatError(fmt::format("key block of {} entries is cut short", count));
  std::vector<KeyStanza> out;
  for (std::size_t i = 0; i < count; ++i) {
    const auto e = tail.subspan(keyblock::kHeaderSize + i * keyblock::kEntrySize, keyblock::kEntrySize);
    auto bad = [&](std::string_view why) { return FormatError(fmt::format("key block entry {}: {}", i, why)); };
    KeyStanza s;
    const auto type = load_le<std::uint16_t>(&e[0]);
    s.scrypt_log_n = e[2];
    std::copy_n(&e[8], 32, s.id.begin());
    std::copy_n(&e[40], 32, s.ephemeral.begin());
    std::copy_n(&e[72], s.wrapped.size(), s.wrapped.begin());
    const bool zero_reserved = e[3] == 0 && load_le<std::uint32_t>(&e[4]) == 0 &&
                               std::all_of(e.begin() + 120, e.end(), [](std::uint8_t b) { return b == 0; });
    if (!zero_reserved) throw bad("reserved bytes are not zero");
    if (type == static_cast<std::uint16_t>(StanzaType::kX25519)) {
      s.type = StanzaType::kX25519;
      if (s.scrypt_log_n != 0) throw bad("an X25519 entry with scrypt parameters");
    } else if (type == static_cast<std::uint16_t>(StanzaType::kScrypt)) {
      s.type = StanzaType::kScrypt;
      if (s.scrypt_log_n < keyblock::kMinScryptLogN || s.scrypt_log_n > keyblock::kMaxScryptLogN)
        throw bad(fmt::format("scrypt work factor 2^{} outside 2^{}..2^{}", s.scrypt_log_n, keyblock::kMinScryptLogN,
                              keyblock::kMaxScryptLogN));
      if (!std::all_of(s.id.begin() + 16, s.id.end(), [](std::uint8_t b) { return b == 0; }) ||
          !std::all_of(s.ephemeral.begin(), s.ephemeral.end(), [](std::uint8_t b) { return b == 0; }))
        throw bad("a passphrase entry with bytes past its salt");
    } else {
      throw bad(fmt::format("unknown type {}", type));
    }
    for (const auto &prev : out)
      if (prev.type == StanzaType::kX25519 && s.type == StanzaType::kX25519 && prev.id == s.id)
        throw bad("a second entry for the same recipient");
    out.push_back(s);
  }
  return {std::move(out), size};
}

std::vector<std::uint8_t> encode_key_block(std::span<const KeyStanza> stanzas) {
  if (stanzas.empty()) throw UsageError("an encrypted package needs at least one recipient or passphrase");
  if (stanzas.size() > keyblock::kMaxEntries)
    throw UsageError(fmt::format("at most {} recipients and passphrases per package", keyblock::kMaxEntries));
  auto b = block::with_header(kKeyBlock, stanzas.size());
  for (std::size_t i = 0; i < stanzas.size(); ++i) {
    auto *e = &b[keyblock::kHeaderSize + i * keyblock::kEntrySize];
    const auto &s = stanzas[i];
    store_le<std::uint16_t>(e, static_cast<std::uint16_t>(s.type));
    e[2] = s.scrypt_log_n;
    std::copy(s.id.begin(), s.id.end(), e + 8);
    std::copy(s.ephemeral.begin(), s.ephemeral.end(), e + 40);
    std::copy(s.wrapped.begin(), s.wrapped.end(), e + 72);
  }
  return b;
}

std::string describe(const KeyStanza &s) {
  if (s.type == StanzaType::kScrypt) return fmt::format("passphrase (scrypt 2^{})", s.scrypt_log_n);
  return fmt::format("x25519 {}", key_id_short(s.id));
}

KeyStanza wrap_for(const PublicKey &recipient, const ContentKey &key) {
  const auto eph = PrivateKey::generate(KeyType::kX25519);
  const auto eph_pub = eph.public_key();
  KeyStanza s;
  s.type = StanzaType::kX25519;
  s.id = recipient.id();
  s.ephemeral = eph_pub.raw();
  auto wk = x25519_wrap_key(eph.handle(), recipient.handle(), eph_pub.raw(), recipient.raw());
  if (!wk) throw UsageError(fmt::format("{}: not a usable X25519 public key", recipient.source()));
  s = wrapped_with(s, *wk, key);
  wipe(wk->data(), wk->size());
  return s;
}

KeyStanza wrap_for_passphrase(std::string_view passphrase, const ContentKey &key, unsigned log_n) {
  if (passphrase.empty()) throw UsageError("empty passphrase");
  if (log_n < keyblock::kMinScryptLogN || log_n > keyblock::kMaxScryptLogN)
    throw UsageError(fmt::format("scrypt work factor 2^{} outside 2^{}..2^{}", log_n, keyblock::kMinScryptLogN,
                                 keyblock::kMaxScryptLogN));
  KeyStanza s;
  s.type = StanzaType::kScrypt;
  s.scrypt_log_n = static_cast<std::uint8_t>(log_n);
  const auto salt = random_bytes32();
  std::copy_n(salt.begin(), 16, s.id.begin());
  auto wk = scrypt_wrap_key(passphrase, std::span(s.id).first<16>(), log_n);
  s = wrapped_with(s, wk, key);
  wipe(wk.data(), wk.size());
  return s;
}

namespace {
std::optional<std::string> ask_passphrase() {
  if (::isatty(STDIN_FILENO) != 1) return std::nullopt;
  std::array<char, 1025> buf{};
  if (api().EVP_read_pw_string(buf.data(), static_cast<int>(buf.size()), "Passphrase for the package: ", 0) != 0)
    return std::nullopt;
  std::string p(buf.data());
  wipe(buf.data(), buf.size());
  return p;
}
}  // namespace

std::optional<Unwrapped> unwrap(std::span<const KeyStanza> stanzas, const KeyRing &ring,
                                std::span<const std::uint8_t, crypt::kKeyCheckSize> check) {
  auto checked = [&](std::optional<ContentKey> k, std::size_t i) -> std::optional<Unwrapped> {
    if (!k) return std::nullopt;
    const auto c = k->check();
    if (!std::equal(c.begin(), c.end(), check.begin()))
      throw IntegrityError(
          fmt::format("key block entry {} ({}) opens to a key this package was not sealed with "
                      "(a forged key block)",
                      i, describe(stanzas[i])));
    return Unwrapped{*k, i};
  };
  // Identities first: they cost one X25519 each, a passphrase costs a whole scrypt.
  for (const auto &id : ring.identities) {
    if (id.type() != KeyType::kX25519) continue;
    const auto pub = id.public_key();
    for (std::size_t i = 0; i < stanzas.size(); ++i) {
      const auto &s = stanzas[i];
      if (s.type != StanzaType::kX25519 || s.id != pub.id()) continue;
      openssl::UniquePkey eph(
          api().EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, s.ephemeral.data(), s.ephemeral.size()));
      if (!eph) {
        api().ERR_clear_error();
        continue;
      }
      auto wk = x25519_wrap_key(id.handle(), eph.get(), s.ephemeral, pub.raw());
      if (!wk) continue;
      auto k = unwrapped_with(s, *wk);
      wipe(wk->data(), wk->size());
      if (auto u = checked(std::move(k), i)) return u;
    }
  }
  const bool has_scrypt =
      std::any_of(stanzas.begin(), stanzas.end(), [](const KeyStanza &s) { return s.type == StanzaType::kScrypt; });
  if (!has_scrypt) return std::nullopt;
  std::vector<std::string> passphrases = ring.passphrases;
  if (passphrases.empty() && ring.ask)
    if (auto p = ask_passphrase()) passphrases.push_back(std::move(*p));
  for (const auto &pass : passphrases)
    for (std::size_t i = 0; i < stanzas.size(); ++i) {
      const auto &s = stanzas[i];
      if (s.type != StanzaType::kScrypt) continue;
      auto wk = scrypt_wrap_key(pass, std::span(s.id).first<16>(), s.scrypt_log_n);
      auto k = unwrapped_with(s, wk);
      wipe(wk.data(), wk.size());
      if (auto u = checked(std::move(k), i)) return u;
    }
  for (auto &p : passphrases) wipe(p.data(), p.size());
  return std::nullopt;
}

}  // namespace torshpkg
