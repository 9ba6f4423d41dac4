// The libcrypto functions src/trust calls beyond SHA-256, reached through one table, and one owning
// type per handle. Private to src/trust: the public headers only forward-declare OpenSSL's structs.
//
// With static_deps (the default) the table is filled from libcrypto.so.3, dlopen()ed on first use,
// and only SHA256_* (digest.cpp) is linked statically: EVP's providers are 3.3 MB of a static
// driver, and on a machine whose disk read-ahead is 8 MiB a cold start reads every byte of the
// executable (docs/PERFORMANCE.md, "Cold mount"), while an unsigned package's mount never needs
// them. Without static_deps the table holds the linked functions. Either way every call site is
// the same: api().EVP_DigestVerify(...).
#pragma once
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ui.h>

#include <memory>
#include <string>

namespace torshpkg::openssl {

// clang-format off
#define TORSHPKG_LIBCRYPTO_FUNCTIONS(X)                                                              \
  X(OPENSSL_init_crypto) X(OPENSSL_cleanse) X(ERR_get_error) X(ERR_clear_error) X(ERR_error_string_n) \
  X(BIO_ctrl) X(BIO_s_mem) X(BIO_new) X(BIO_new_mem_buf) X(BIO_free_all)                              \
  X(PEM_write_bio_PUBKEY) X(PEM_write_bio_PKCS8PrivateKey) X(PEM_read_bio_PrivateKey)                 \
  X(PEM_read_bio_PUBKEY) X(EVP_read_pw_string) X(EVP_PKEY_get_raw_public_key)                         \
  X(EVP_PKEY_new_raw_public_key) X(EVP_PKEY_get_id) X(EVP_PKEY_Q_keygen) X(EVP_PKEY_free)             \
  X(EVP_MD_CTX_new) X(EVP_MD_CTX_free) X(EVP_DigestVerifyInit) X(EVP_DigestVerify)                    \
  X(EVP_DigestSignInit) X(EVP_DigestSign) X(EVP_aes_256_cbc)                                        \
  X(EVP_aes_256_gcm) X(EVP_CIPHER_CTX_new) X(EVP_CIPHER_CTX_free) X(EVP_CIPHER_CTX_ctrl)              \
  X(EVP_EncryptInit_ex) X(EVP_EncryptUpdate) X(EVP_EncryptFinal_ex)                                   \
  X(EVP_DecryptInit_ex) X(EVP_DecryptUpdate) X(EVP_DecryptFinal_ex)                                   \
  X(EVP_PKEY_CTX_new) X(EVP_PKEY_CTX_free) X(EVP_PKEY_derive_init) X(EVP_PKEY_derive_set_peer)        \
  X(EVP_PKEY_derive) X(EVP_PBE_scrypt) X(RAND_bytes)
// clang-format on

struct Api {
#define TORSHPKG_DECLARE_POINTER(f) decltype(&::f) f = nullptr;
  TORSHPKG_LIBCRYPTO_FUNCTIONS(TORSHPKG_DECLARE_POINTER)
#undef TORSHPKG_DECLARE_POINTER
};

// Loaded (and OpenSSL initialised without openssl.cnf) on first use; throws UsageError when
// libcrypto.so.3 cannot be loaded, and a later call tries again.
const Api &api();

// Frees a handle with the table's `F` (which accepts null). Stateless: a handle stays one pointer wide.
template <auto F>
struct Free {
  template <class T>
  void operator()(T *p) const noexcept {
    if (p) (api().*F)(p);
  }
};

// The newest OpenSSL error as text, and the queue cleared, for messages that name the cause.
[[nodiscard]] std::string error_text();

using UniqueBio = std::unique_ptr<BIO, Free<&Api::BIO_free_all>>;
using UniqueCipherCtx = std::unique_ptr<EVP_CIPHER_CTX, Free<&Api::EVP_CIPHER_CTX_free>>;
using UniquePkeyCtx = std::unique_ptr<EVP_PKEY_CTX, Free<&Api::EVP_PKEY_CTX_free>>;
using UniqueMdCtx = std::unique_ptr<EVP_MD_CTX, Free<&Api::EVP_MD_CTX_free>>;
using UniquePkey = std::unique_ptr<EVP_PKEY, Free<&Api::EVP_PKEY_free>>;
// A key that copies of PublicKey/PrivateKey share; make it from a UniquePkey, whose deleter it keeps:
// `SharedPkey key = UniquePkey(k);`.
using SharedPkey = std::shared_ptr<EVP_PKEY>;

}  // namespace torshpkg::openssl
