#include "curl_api.hpp"

#include <dlfcn.h>

#include <fmt/format.h>
#include <mutex>

#include "torshpkg/errors.hpp"

namespace torshpkg::remote {

namespace {

template <typename F>
void bind(void *lib, F &fn, const char *name) {
  void *sym = ::dlsym(lib, name);
  if (!sym) throw InternalError(fmt::format("libcurl.so.4 has no {}", name));
  fn = reinterpret_cast<F>(sym);
}

CurlApi load() {
  // Never unloaded: handles may live until exit.
  void *lib = ::dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char *why = ::dlerror();
    throw UsageError(fmt::format("remote packages need libcurl (apt-get install libcurl4): {}", why ? why : "not found"));
  }
  CurlApi api{};
  bind(lib, api.global_init, "curl_global_init");
  bind(lib, api.easy_init, "curl_easy_init");
  bind(lib, api.easy_cleanup, "curl_easy_cleanup");
  bind(lib, api.easy_setopt, "curl_easy_setopt");
  bind(lib, api.easy_perform, "curl_easy_perform");
  bind(lib, api.easy_strerror, "curl_easy_strerror");
  bind(lib, api.share_init, "curl_share_init");
  bind(lib, api.share_setopt, "curl_share_setopt");
  bind(lib, api.share_cleanup, "curl_share_cleanup");
  bind(lib, api.slist_append, "curl_slist_append");
  bind(lib, api.slist_free_all, "curl_slist_free_all");
  // curl_global_init is not thread-safe: here, once, before the first handle.
  if (api.global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) throw InternalError("curl_global_init failed");
  return api;
}

}  // namespace

const CurlApi &curl_api() {
  static std::once_flag once;
  static CurlApi api{};
  std::call_once(once, [] { api = load(); });  // a throw leaves it to be tried again
  return api;
}

}  // namespace torshpkg::remote
