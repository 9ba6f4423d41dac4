// libFuzzer target over mounting a zip in place: bytes -> open_zip (hand-written central
// directory parser, tree synthesis) -> read every file through a Reader, forwards and then from
// the end (the deflate cursor restarts). torshpkg errors are expected; crashes, sanitizer reports,
// hangs and unbounded memory are findings. Build with -Dfuzz=true (see scripts/fuzz --target zip).
#include <cstdint>
#include <string>
#include <vector>

#include "torshpkg/errors.hpp"
#include "torshpkg/package.hpp"
#include "torshpkg/reader.hpp"
#include "torshpkg/zip_package.hpp"

extern "C" const char *__ubsan_default_options() {
  return "halt_on_error=1:abort_on_error=1:print_stacktrace=1";
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
  try {
    const auto pkg = torshpkg::open_zip(
        std::make_shared<torshpkg::MemorySource>(std::vector<std::uint8_t>(data, data + size), "fuzz.zip"));
    torshpkg::Reader reader(pkg, 8u << 20);
    std::vector<std::uint8_t> buf(64 << 10);
    for (std::uint32_t i = 0; i < pkg->inode_count(); ++i) {
      if (pkg->resolve(pkg->path_of(i)) != i) __builtin_trap();  // the synthesised tree must be consistent
      if (pkg->type(i) != torshpkg::format::NodeType::kRegular) continue;
      const std::uint64_t file_size = pkg->inode(i).size;
      try {
        for (std::uint64_t off = 0; off < file_size && off < (16u << 20); off += buf.size())
          (void)reader.read(i, off, buf);
        if (file_size > 1) (void)reader.read(i, file_size / 2, std::span(buf).first(1));
        (void)reader.read(i, 0, std::span(buf).first(1));
      } catch (const torshpkg::Error &) {
      }
    }
  } catch (const torshpkg::Error &) {
  }
  return 0;
}
