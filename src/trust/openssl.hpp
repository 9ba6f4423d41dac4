// One owning type per OpenSSL handle that src/trust uses, and the one place that knows how each is
// freed. Private to src/trust: the public headers only forward-declare OpenSSL's structs.
#pragma once
#include <openssl/bio.h>
#include <openssl/evp.h>

#include <memory>

namespace torshpkg::openssl {

// Frees a handle with OpenSSL's `F` (which accepts null). Stateless: a handle stays one pointer wide.
template <auto F>
struct Free {
  template <class T>
  void operator()(T *p) const noexcept {
    F(p);
  }
};

using UniqueBio = std::unique_ptr<BIO, Free<BIO_free_all>>;
using UniqueMdCtx = std::unique_ptr<EVP_MD_CTX, Free<EVP_MD_CTX_free>>;
using UniquePkey = std::unique_ptr<EVP_PKEY, Free<EVP_PKEY_free>>;
// A key that copies of PublicKey/PrivateKey share; make it from a UniquePkey, whose deleter it keeps:
// `SharedPkey key = UniquePkey(k);`.
using SharedPkey = std::shared_ptr<EVP_PKEY>;

}  // namespace torshpkg::openssl
