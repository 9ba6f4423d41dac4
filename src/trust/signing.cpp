#include "torshpkg/signing.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <cstring>

#include "block.hpp"
#include "openssl.hpp"
#include "torshpkg/endian.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/file.hpp"

namespace torshpkg {

namespace {

using openssl::api;
using openssl::UniqueBio;
using openssl::UniqueMdCtx;
using openssl::UniquePkey;

std::string openssl_error() {
  return openssl::error_text();
}

std::string bio_text(BIO *bio) {
  char *data = nullptr;
  const long n = api().BIO_ctrl(bio, BIO_CTRL_INFO, 0, reinterpret_cast<char *>(&data));  // BIO_get_mem_data
  return std::string(data, static_cast<std::size_t>(n));
}

std::string read_small_file(const std::string &path, std::size_t limit) {
  const auto fd = open_read(path);
  std::string text(limit + 1, '\0');
  const auto n = read_full(fd.get(), std::span(reinterpret_cast<std::uint8_t *>(text.data()), text.size()), path);
  if (n > limit) throw UsageError(fmt::format("{}: larger than {} bytes, not a key file", path, limit));
  text.resize(n);
  return text;
}

// The message an Ed25519 signature covers: fixed context, then the root digest.
std::array<std::uint8_t, 48> signed_message(const Digest &root) {
  static_assert(sigblock::kContext.size() == 16);
  std::array<std::uint8_t, 48> m{};
  std::memcpy(m.data(), sigblock::kContext.data(), 16);
  std::memcpy(m.data() + 16, root.data(), root.size());
  return m;
}

struct PassphraseRequest {
  const std::optional<std::string> *given;
  const std::string *path;
  bool unanswered = false;
};

int passphrase_callback(char *buf, int size, int /*rwflag*/, void *u) {
  auto *req = static_cast<PassphraseRequest *>(u);
  if (req->given->has_value()) {
    const auto &p = **req->given;
    if (p.size() > static_cast<std::size_t>(size)) return -1;
    std::memcpy(buf, p.data(), p.size());
    return static_cast<int>(p.size());
  }
  if (::isatty(STDIN_FILENO) != 1) {
    req->unanswered = true;
    return -1;
  }
  const std::string prompt = fmt::format("Passphrase for {}: ", *req->path);
  if (api().EVP_read_pw_string(buf, size, prompt.c_str(), 0) != 0) return -1;
  return static_cast<int>(std::strlen(buf));
}

int evp_id(KeyType t) {
  return t == KeyType::kEd25519 ? EVP_PKEY_ED25519 : EVP_PKEY_X25519;
}

// The refusal for a key file of the wrong kind, saying what that kind is for.
void require_type(const UniquePkey &k, KeyType want, const std::string &what) {
  if (api().EVP_PKEY_get_id(k.get()) == evp_id(want)) return;
  if (want == KeyType::kEd25519)
    throw UsageError(
        fmt::format("{}: not an Ed25519 key (torshpkg signs with Ed25519; X25519 keys are for encryption)", what));
  throw UsageError(fmt::format("{}: not an X25519 key (make one with torshpkg keygen --encryption)", what));
}

}  // namespace

std::string key_id_short(const KeyId &id) {
  return to_hex(std::span(id).first(8));
}

const block::Shape kSignatureBlock{"signature block", sigblock::kMagic, sigblock::kVersion, sigblock::kEntrySize,
                                   sigblock::kMaxEntries};

std::vector<SignatureEntry> parse_signature_block(std::span<const std::uint8_t> block) {
  std::vector<SignatureEntry> out;
  if (block.empty()) return out;
  const auto [count, size] = block::parse_header(block, kSignatureBlock);
  if (block.size() != size)
    throw FormatError(fmt::format("signature block is {} bytes, {} signatures need {}", block.size(), count, size));
  for (std::size_t i = 0; i < count; ++i) {
    const auto e = block.subspan(sigblock::kHeaderSize + i * sigblock::kEntrySize, sigblock::kEntrySize);
    SignatureEntry s;
    const auto alg = load_le<std::uint16_t>(&e[0]);
    if (alg != static_cast<std::uint16_t>(SignatureAlgorithm::kEd25519))
      throw FormatError(fmt::format("signature {} uses unknown algorithm {}", i, alg));
    if (load_le<std::uint16_t>(&e[2]) != 0 || load_le<std::uint32_t>(&e[4]) != 0)
      throw FormatError(fmt::format("signature {} has non-zero reserved bytes", i));
    std::copy_n(&e[8], s.key_id.size(), s.key_id.begin());
    std::copy_n(&e[40], s.signature.size(), s.signature.begin());
    for (const auto &prev : out)
      if (prev.key_id == s.key_id) throw FormatError(fmt::format("two signatures by key {}", key_id_short(s.key_id)));
    out.push_back(s);
  }
  return out;
}

std::vector<std::uint8_t> encode_signature_block(std::span<const SignatureEntry> entries) {
  if (entries.empty()) return {};
  if (entries.size() > sigblock::kMaxEntries)
    throw UsageError(fmt::format("at most {} signatures per package", sigblock::kMaxEntries));
  auto b = block::with_header(kSignatureBlock, entries.size());
  for (std::size_t i = 0; i < entries.size(); ++i) {
    auto *e = &b[sigblock::kHeaderSize + i * sigblock::kEntrySize];
    store_le<std::uint16_t>(e, static_cast<std::uint16_t>(entries[i].algorithm));
    std::copy(entries[i].key_id.begin(), entries[i].key_id.end(), e + 8);
    std::copy(entries[i].signature.begin(), entries[i].signature.end(), e + 40);
  }
  return b;
}

// ---- keys ----

// The constructors take ownership of `key`, also when they throw.
PublicKey::PublicKey(evp_pkey_st *key, std::string source)
    : key_(openssl::SharedPkey(UniquePkey(key))), source_(std::move(source)) {
  std::size_t len = raw_.size();
  if (api().EVP_PKEY_get_raw_public_key(key_.get(), raw_.data(), &len) != 1 || len != raw_.size())
    throw InternalError("OpenSSL: cannot read the raw public key: " + openssl_error());
  id_ = sha256(raw_);
}

PublicKey PublicKey::from_pem(std::string_view pem, const std::string &what, KeyType type) {
  UniqueBio bio(api().BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) throw InternalError("OpenSSL: out of memory");
  UniquePkey k(api().PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  if (!k) {
    api().ERR_clear_error();
    throw UsageError(fmt::format("{}: not a PEM public key", what));
  }
  require_type(k, type, what);
  return PublicKey(k.release(), what);
}

PublicKey PublicKey::load(const std::string &path, KeyType type) {
  return from_pem(read_small_file(path, 64 << 10), path, type);
}

bool PublicKey::verifies(const Digest &root, std::span<const std::uint8_t> signature) const {
  if (signature.size() != kEd25519SignatureSize) return false;
  UniqueMdCtx ctx(api().EVP_MD_CTX_new());
  if (!ctx || api().EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key_.get()) != 1)
    throw InternalError("OpenSSL: cannot start a verification: " + openssl_error());
  const auto msg = signed_message(root);
  const int ok = api().EVP_DigestVerify(ctx.get(), signature.data(), signature.size(), msg.data(), msg.size());
  api().ERR_clear_error();
  return ok == 1;
}

std::string PublicKey::pem() const {
  UniqueBio bio(api().BIO_new(api().BIO_s_mem()));
  if (!bio || api().PEM_write_bio_PUBKEY(bio.get(), key_.get()) != 1)
    throw InternalError("OpenSSL: cannot write a public key: " + openssl_error());
  return bio_text(bio.get());
}

PrivateKey::PrivateKey(evp_pkey_st *key, KeyType type) : key_(openssl::SharedPkey(UniquePkey(key))), type_(type) {}

PrivateKey PrivateKey::generate(KeyType type) {
  UniquePkey k(api().EVP_PKEY_Q_keygen(nullptr, nullptr, type == KeyType::kEd25519 ? "ED25519" : "X25519"));
  if (!k) throw InternalError("OpenSSL: key generation failed: " + openssl_error());
  return PrivateKey(k.release(), type);
}

PrivateKey PrivateKey::load(const std::string &path, const std::optional<std::string> &passphrase, KeyType type) {
  return from_pem(read_small_file(path, 64 << 10), path, passphrase, type);
}

PrivateKey PrivateKey::from_pem(std::string_view text, const std::string &path,
                                const std::optional<std::string> &passphrase, KeyType type) {
  UniqueBio bio(api().BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
  if (!bio) throw InternalError("OpenSSL: out of memory");
  PassphraseRequest req{&passphrase, &path};
  UniquePkey k(api().PEM_read_bio_PrivateKey(bio.get(), nullptr, passphrase_callback, &req));
  if (!k) {
    api().ERR_clear_error();
    if (req.unanswered) throw UsageError(fmt::format("{}: the key is encrypted: give --passphrase-file", path));
    if (text.find("ENCRYPTED") != std::string_view::npos) throw UsageError(fmt::format("{}: wrong passphrase", path));
    throw UsageError(fmt::format("{}: not a PEM private key", path));
  }
  require_type(k, type, path);
  return PrivateKey(k.release(), type);
}

PublicKey PrivateKey::public_key() const {
  std::array<std::uint8_t, kEd25519PublicKeySize> raw{};
  std::size_t len = raw.size();
  if (api().EVP_PKEY_get_raw_public_key(key_.get(), raw.data(), &len) != 1 || len != raw.size())
    throw InternalError("OpenSSL: cannot read the public key: " + openssl_error());
  UniquePkey pub(api().EVP_PKEY_new_raw_public_key(evp_id(type_), nullptr, raw.data(), raw.size()));
  if (!pub) throw InternalError("OpenSSL: cannot build the public key: " + openssl_error());
  return PublicKey(pub.release(), "private key");
}

SignatureEntry PrivateKey::sign(const Digest &root) const {
  if (type_ != KeyType::kEd25519) throw UsageError("an X25519 key cannot sign; sign with an Ed25519 key");
  SignatureEntry e;
  e.key_id = public_key().id();
  UniqueMdCtx ctx(api().EVP_MD_CTX_new());
  if (!ctx || api().EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key_.get()) != 1)
    throw InternalError("OpenSSL: cannot start signing: " + openssl_error());
  const auto msg = signed_message(root);
  std::size_t len = e.signature.size();
  if (api().EVP_DigestSign(ctx.get(), e.signature.data(), &len, msg.data(), msg.size()) != 1 ||
      len != e.signature.size())
    throw InternalError("OpenSSL: signing failed: " + openssl_error());
  return e;
}

std::string PrivateKey::pem(const std::string &passphrase) const {
  UniqueBio bio(api().BIO_new(api().BIO_s_mem()));
  if (!bio) throw InternalError("OpenSSL: out of memory");
  const EVP_CIPHER *cipher = passphrase.empty() ? nullptr : api().EVP_aes_256_cbc();
  if (api().PEM_write_bio_PKCS8PrivateKey(bio.get(), key_.get(), cipher,
                                          passphrase.empty() ? nullptr : passphrase.data(),
                                          static_cast<int>(passphrase.size()), nullptr, nullptr) != 1)
    throw InternalError("OpenSSL: cannot write the private key: " + openssl_error());
  return bio_text(bio.get());
}

std::optional<std::string> read_passphrase_file(const std::string &path) {
  if (path.empty()) return std::nullopt;
  const auto fd = open_read(path);
  std::string text(4097, '\0');
  const auto n = read_full(fd.get(), std::span(reinterpret_cast<std::uint8_t *>(text.data()), text.size()), path);
  text.resize(n);
  if (const auto nl = text.find('\n'); nl != std::string::npos) text.resize(nl);
  if (text.size() > 4096) throw UsageError(path + ": passphrase longer than 4096 bytes");
  return text;
}

std::string prompt_new_passphrase(const std::string &what) {
  if (::isatty(STDIN_FILENO) != 1) throw UsageError("--ask-passphrase needs a terminal; use --passphrase-file");
  std::array<char, 1025> buf{};
  const std::string prompt = fmt::format("Passphrase for {}: ", what);
  // verify=1: OpenSSL asks twice and fails when the answers differ.
  if (api().EVP_read_pw_string(buf.data(), static_cast<int>(buf.size()), prompt.c_str(), 1) != 0)
    throw UsageError("passphrases do not match (or reading it failed)");
  std::string p(buf.data());
  api().OPENSSL_cleanse(buf.data(), buf.size());
  return p;
}

// ---- trust ----

void TrustStore::add(PublicKey key) {
  if (!find(key.id())) keys_.push_back(std::move(key));
}

TrustStore TrustStore::from(const std::vector<std::string> &pubkeys, const std::vector<std::string> &dirs) {
  TrustStore trust;
  for (const auto &p : pubkeys) trust.add_file(p);
  for (const auto &d : dirs) trust.add_dir(d);
  if (pubkeys.empty() && dirs.empty()) trust.add_dir(std::string(kDefaultTrustDir));
  return trust;
}

KeyId TrustStore::add_file(const std::string &path) {
  auto key = PublicKey::load(path);
  const auto id = key.id();
  add(std::move(key));
  return id;
}

std::vector<std::string> trust_dir_files(const std::string &dir) {
  std::unique_ptr<DIR, int (*)(DIR *)> d(::opendir(dir.c_str()), ::closedir);
  if (!d) throw_errno("open directory", dir);
  std::vector<std::string> out;
  while (const dirent *e = ::readdir(d.get())) {
    const std::string_view n = e->d_name;
    if (n.size() <= 4 || !n.ends_with(".pub")) continue;
    const std::string path = dir + "/" + std::string(n);
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) out.push_back(path);
  }
  std::sort(out.begin(), out.end());  // deterministic order for messages
  return out;
}

std::vector<std::pair<KeyId, std::string>> TrustStore::add_dir(const std::string &dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    if (errno == ENOENT) return {};
    throw_errno("stat", dir);
  }
  if (!S_ISDIR(st.st_mode)) throw UsageError(dir + ": trust directory is not a directory");
  if (st.st_mode & (S_IWGRP | S_IWOTH))
    throw UsageError(fmt::format("{}: trust directory is writable by group or others (mode {:o}); refusing it", dir,
                                 st.st_mode & 07777));
  std::vector<std::pair<KeyId, std::string>> read;
  for (const auto &path : trust_dir_files(dir)) {
    if (::stat(path.c_str(), &st) != 0) throw_errno("stat", path);
    if (st.st_mode & (S_IWGRP | S_IWOTH))
      throw UsageError(fmt::format("{}: trusted key is writable by group or others (mode {:o}); refusing it", path,
                                   st.st_mode & 07777));
    read.emplace_back(add_file(path), path);
  }
  return read;
}

const PublicKey *TrustStore::find(const KeyId &id) const noexcept {
  for (const auto &k : keys_)
    if (k.id() == id) return &k;
  return nullptr;
}

std::vector<std::uint8_t> signature_block_for(const Digest &root, std::span<const PrivateKey> keys) {
  std::vector<SignatureEntry> entries;
  for (const auto &k : keys) {
    auto e = k.sign(root);
    const bool dup = std::any_of(entries.begin(), entries.end(), [&](const auto &x) { return x.key_id == e.key_id; });
    if (!dup) entries.push_back(e);
  }
  return encode_signature_block(entries);
}

}  // namespace torshpkg
