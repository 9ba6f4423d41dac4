// Opening a package by location: the one table of backends (where the bytes come from: a file,
// HTTP(S); S3 and OCI registries later) and of containers (how the bytes are read: a .tpkg, or a
// zip mounted in place). src/open/open.cpp holds both tables.
//
// Adding a backend: a ChunkSource in its own file (src/io/ or a folder of its own) and one line
// in kBackends. Adding a container: its opener in its own file and one line in kContainers.
#pragma once
#include <memory>
#include <string>

#include "torshpkg/http_source.hpp"
#include "torshpkg/package.hpp"

namespace torshpkg {

struct OpenOptions {
  ChunkDigests digests = ChunkDigests::kVerify;
  ManifestCheck manifest_check = ManifestCheck::kAtOpen;  // .tpkg only: a zip's manifest is built, not read
  // Also open containers other than .tpkg (zip archives, whose index is synthesised).
  bool any_container = false;
  // Such containers cannot be signed: without this, recognising one is a TrustError, before any
  // of it is parsed.
  bool allow_unsigned = false;
  // For remote backends: mirrors, timeouts, TLS.
  RemoteOptions remote;
  // The disk chunk cache for remote packages (null: none). Local files never use it.
  std::shared_ptr<ChunkStore> store;
  // Encrypted packages: the keys to try (none: KeyError, unless a locked package is allowed).
  std::shared_ptr<const KeyRing> keys;
  Package::Locked locked = Package::Locked::kRefused;
};

// True for locations a network backend serves (http, https, s3): they take RemoteOptions and the
// disk chunk cache.
[[nodiscard]] bool is_remote_location(std::string_view location) noexcept;
// The source for a location: a path, or a URL of a scheme a backend serves (UsageError naming the
// scheme otherwise).
[[nodiscard]] std::shared_ptr<const ChunkSource> open_source(const std::string &location,
                                                            const OpenOptions &opts = {});
// The package at a location: the container is recognised from its first bytes.
[[nodiscard]] std::shared_ptr<const Package> open_package(const std::string &location, const OpenOptions &opts = {});

}  // namespace torshpkg
