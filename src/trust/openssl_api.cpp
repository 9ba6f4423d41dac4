#include "openssl.hpp"

#include <fmt/format.h>
#include <mutex>

#include "torshpkg/errors.hpp"

#if TORSHPKG_DLOPEN_LIBCRYPTO
#include <dlfcn.h>
#endif

namespace torshpkg::openssl {

namespace {

Api load() {
  Api api{};
#if TORSHPKG_DLOPEN_LIBCRYPTO
  // Never unloaded: keys and contexts may live until exit.
  void *lib = ::dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char *why = ::dlerror();
    throw UsageError(fmt::format("signatures and encryption need OpenSSL 3 (apt-get install libssl3): {}",
                                 why ? why : "libcrypto.so.3 not found"));
  }
  auto bind = [lib](auto &fn, const char *name) {
    void *sym = ::dlsym(lib, name);
    if (!sym) throw InternalError(fmt::format("libcrypto.so.3 has no {}", name));
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(sym);
  };
#define TORSHPKG_BIND(f) bind(api.f, #f);
#else
#define TORSHPKG_BIND(f) api.f = &::f;
#endif
  TORSHPKG_LIBCRYPTO_FUNCTIONS(TORSHPKG_BIND)
#undef TORSHPKG_BIND
  // Only Ed25519, X25519, scrypt and AES of the default provider are used: no openssl.cnf, which cost a cold start
  // 2.5 ms (a static test program doing one EVP digest after drop_caches: 14.0 -> 11.5 ms).
  if (api.OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, nullptr) != 1)
    throw InternalError("OpenSSL: cannot initialise");
  return api;
}

}  // namespace

std::string error_text() {
  const unsigned long e = api().ERR_get_error();
  api().ERR_clear_error();
  if (e == 0) return "unknown OpenSSL error";
  char buf[256];
  api().ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

const Api &api() {
  static std::once_flag once;
  static Api table{};
  std::call_once(once, [] { table = load(); });  // a throw leaves it to be tried again
  return table;
}

}  // namespace torshpkg::openssl
