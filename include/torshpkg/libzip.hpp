// RAII for libzip handles and its error text, shared by the zip importer/exporter and the pickle
// scanner (internal to the core library).
#pragma once
#include <zip.h>

#include <memory>
#include <string>

namespace torshpkg::libzip {

struct ZipDiscard {
  void operator()(zip_t *z) const noexcept { zip_discard(z); }  // for archives opened read-only
};
using UniqueZip = std::unique_ptr<zip_t, ZipDiscard>;
struct ZipFileClose {
  void operator()(zip_file_t *f) const noexcept { zip_fclose(f); }
};
using UniqueZipFile = std::unique_ptr<zip_file_t, ZipFileClose>;

inline std::string error_text(int code) {
  zip_error_t e;
  zip_error_init_with_code(&e, code);
  std::string s = zip_error_strerror(&e);
  zip_error_fini(&e);
  return s;
}

}  // namespace torshpkg::libzip
