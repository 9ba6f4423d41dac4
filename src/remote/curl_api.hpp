// libcurl, loaded on first use with dlopen: a driver that mounts local packages never maps it and
// the two dozen libraries it pulls in (Kerberos, LDAP, GnuTLS, ...), which doubled the cold mount
// time (26 -> 47 ms median of 7 after drop_caches, with libcurl linked).
#pragma once
#include <curl/curl.h>

namespace torshpkg::remote {

struct CurlApi {
  CURLcode (*global_init)(long flags);
  CURL *(*easy_init)();
  void (*easy_cleanup)(CURL *h);
  CURLcode (*easy_setopt)(CURL *h, CURLoption option, ...);
  CURLcode (*easy_perform)(CURL *h);
  const char *(*easy_strerror)(CURLcode code);
  CURLSH *(*share_init)();
  CURLSHcode (*share_setopt)(CURLSH *sh, CURLSHoption option, ...);
  CURLSHcode (*share_cleanup)(CURLSH *sh);
  curl_slist *(*slist_append)(curl_slist *list, const char *line);
  void (*slist_free_all)(curl_slist *list);
};

// Loads libcurl.so.4 and curl_global_init()s it, once per process. Throws UsageError when it is not
// installed (remote packages need Debian's libcurl4), InternalError when it lacks a symbol.
[[nodiscard]] const CurlApi &curl_api();

}  // namespace torshpkg::remote
