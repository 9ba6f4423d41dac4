// The chunk pipeline: how the stored bytes of one chunk become the bytes a reader sees.
//
//   ChunkSource::read  ->  verify SHA-256  ->  decrypt (encrypted packages)  ->  decode (codec registry)
//                      ->  undo byte-grouping filter  ->  caller's buffer
//
// Each stage is one small class in its own file (src/read/stage_*.cpp) with its own unit test;
// a stage says whether it applies to a chunk and, if it transforms the bytes, how many it produces.
// The pipeline runs the stages that apply, ping-ponging between two scratch buffers and writing the
// last transforming stage straight into the caller's buffer (a chunk that no stage transforms is
// read straight into it). Per-thread state (scratch, one decoder per codec) lives in a context
// taken from a small pool for the length of one chunk: no hidden thread_locals.
//
// Adding a stage: a new stage_NAME.cpp defining it and a factory, the factory's declaration below,
// one line in ChunkPipeline::standard_stages (src/read/pipeline.cpp), one line in meson.build.
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string_view>
#include <vector>

#include "torshpkg/chunk_source.hpp"
#include "torshpkg/codec.hpp"
#include "torshpkg/format.hpp"

namespace torshpkg {

// One chunk on its way through the pipeline.
struct ChunkWork {
  std::uint64_t index = 0;  // in the package's chunk table, for messages
  format::ChunkEntry entry;
  bool from_store = false;  // the stored bytes came out of the disk chunk cache
};

class ChunkStore;
class Sealer;

// Per-thread state: two scratch buffers, one buffer for runs of adjacent stored chunks, and one
// decoder per codec, made on first use.
class PipelineContext {
 public:
  [[nodiscard]] CodecDecoder &decoder(format::Codec id);
  [[nodiscard]] std::vector<std::uint8_t> &scratch(unsigned i) noexcept { return scratch_[i & 1]; }
  // `size` bytes of contents undefined. Kept at its largest size: a fresh multi-MiB buffer per run
  // cost its page faults and zeroing, a quarter of a remote read's CPU.
  [[nodiscard]] std::span<std::uint8_t> run_buffer(std::size_t size) {
    if (run_.size() < size) run_.resize(size);
    return {run_.data(), size};
  }

 private:
  std::array<std::vector<std::uint8_t>, 2> scratch_;
  std::vector<std::uint8_t> run_;
  std::vector<std::unique_ptr<CodecDecoder>> decoders_;  // by codec id
};

class ChunkStage {
 public:
  virtual ~ChunkStage() = default;
  [[nodiscard]] virtual std::string_view name() const noexcept = 0;
  [[nodiscard]] virtual bool applies(const format::ChunkEntry &c) const noexcept = 0;
  // False for a stage that only checks its input (run gets an empty `out`).
  [[nodiscard]] virtual bool transforms() const noexcept = 0;
  // Bytes this stage produces from `in_size` bytes of input (transforming stages only).
  [[nodiscard]] virtual std::size_t output_size(const format::ChunkEntry &c, std::size_t in_size) const = 0;
  // Throws IntegrityError when the bytes fail a check or do not decode, FormatError when the entry
  // asks for something this reader does not implement.
  virtual void run(const ChunkWork &w, std::span<const std::uint8_t> in, std::span<std::uint8_t> out,
                   PipelineContext &ctx) const = 0;
};

// The stages, in pipeline order (factories defined in src/read/stage_*.cpp).
[[nodiscard]] std::unique_ptr<ChunkStage> verify_digest_stage();  // SHA-256 of the stored bytes
// Verified stored bytes into the disk chunk cache (after verify only).
[[nodiscard]] std::unique_ptr<ChunkStage> store_verified_stage(std::shared_ptr<ChunkStore> store);
// AES-256-GCM of an encrypted package (crypt.hpp); a null sealer (no key) refuses every chunk.
[[nodiscard]] std::unique_ptr<ChunkStage> decrypt_stage(std::shared_ptr<const Sealer> sealer, std::string package);
[[nodiscard]] std::unique_ptr<ChunkStage> decode_stage();         // the entry's codec, from the registry
[[nodiscard]] std::unique_ptr<ChunkStage> undo_filter_stage();    // byte-grouping filters (filter.hpp)

class ChunkPipeline {
 public:
  using Stages = std::vector<std::unique_ptr<ChunkStage>>;
  // With a `store`, chunks are looked up in the disk chunk cache before the source is read (the
  // stages must then verify digests and include store_verified_stage()).
  ChunkPipeline(std::shared_ptr<const ChunkSource> source, Stages stages, std::shared_ptr<ChunkStore> store = nullptr);
  // The package read path. `verify_digests` is false only for indexes without chunk digests (a
  // zip's, whose source checks CRC-32s) and for -o unsafe_skip_chunk_digests; a `store` needs them.
  // `decrypt`: decrypt_stage() for an encrypted package, placed after verify and store.
  [[nodiscard]] static Stages standard_stages(bool verify_digests, std::shared_ptr<ChunkStore> store = nullptr,
                                              std::unique_ptr<ChunkStage> decrypt = nullptr);

  // Reads chunk `w` (from the disk chunk cache, else the source) and runs the stages; out.size() must
  // be its decoded size. Bytes that fail their digest are asked for again from another origin of the
  // source while it has one (ChunkSource::distrust), and dropped from the cache.
  void load(const ChunkWork &w, std::span<std::uint8_t> out) const;
  // Chunks whose stored bytes lie back to back in the source, with one read (a remote source's one
  // range request); chunks found in the disk cache are not re-read. outs[i] gets works[i].
  void load_adjacent(std::span<const ChunkWork> works, std::span<const std::span<std::uint8_t>> outs) const;
  // Fetches, verifies and stores in the disk cache those of `works` it lacks, decoding nothing
  // (prefetch); silent on failure. No-op without a store.
  void fetch_into_store(std::span<const ChunkWork> works) const;
  // Runs the stages over stored bytes already in hand (no source read).
  void decode(const ChunkWork &w, std::span<const std::uint8_t> stored, std::span<std::uint8_t> out) const;
  [[nodiscard]] const ChunkSource &source() const noexcept { return *source_; }
  [[nodiscard]] const ChunkStore *store() const noexcept { return store_.get(); }

  struct Stats {
    std::uint64_t chunks_decoded = 0, bytes_decoded = 0, bytes_from_store = 0, digest_failures = 0;
  };
  [[nodiscard]] Stats stats() const noexcept;

 private:
  struct ReturnContext {
    const ChunkPipeline *pipeline;
    void operator()(PipelineContext *c) const noexcept;
  };
  using ContextLease = std::unique_ptr<PipelineContext, ReturnContext>;
  [[nodiscard]] ContextLease take_context() const;
  void run_stages(const ChunkWork &w, std::span<const std::uint8_t> in, std::span<std::uint8_t> out,
                  PipelineContext &ctx, bool in_is_out) const;
  // Whether any stage that applies to `w` changes its bytes (else they are read straight into out).
  [[nodiscard]] bool transforms(const format::ChunkEntry &e) const noexcept;
  // From the disk cache into `stored` and through the stages: false on a miss or bad bytes.
  bool load_from_store(const ChunkWork &w, std::span<std::uint8_t> stored, std::span<std::uint8_t> out,
                       PipelineContext &ctx, bool in_is_out) const;
  // Stages over bytes just read from the source at `w`'s range; true when done, false when they
  // failed their digest and the source has another origin to ask.
  bool run_fresh(const ChunkWork &w, std::span<const std::uint8_t> stored, std::span<std::uint8_t> out,
                 PipelineContext &ctx, bool in_is_out) const;

  std::shared_ptr<const ChunkSource> source_;
  Stages stages_;
  std::shared_ptr<ChunkStore> store_;
  mutable std::atomic<std::uint64_t> chunks_decoded_{0}, bytes_decoded_{0}, bytes_from_store_{0}, digest_failures_{0};
  mutable std::mutex contexts_mu_;
  mutable std::vector<std::unique_ptr<PipelineContext>> contexts_;  // idle ones
};

// Decode and undo filter without a source or digests: tests, benchmarks. Keep one per thread.
class ChunkDecoder {
 public:
  ChunkDecoder();
  // Decodes stored bytes into exactly `out.size()` bytes; throws IntegrityError when the payload
  // does not decode to exactly that many bytes, FormatError for an unknown codec or filter.
  void decode(format::Codec codec, format::Filter filter, std::span<const std::uint8_t> stored,
              std::span<std::uint8_t> out);

 private:
  ChunkPipeline pipeline_;
};

}  // namespace torshpkg
