#include "torshpkg/filter.hpp"

#include <algorithm>
#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <fmt/format.h>

#include "torshpkg/errors.hpp"

namespace torshpkg {

namespace {

// Plane loops with the width fixed at compile time so the compiler can unroll and vectorise them.
template <unsigned W>
void split(const std::uint8_t *src, std::size_t m, std::uint8_t *dst) {
  for (unsigned j = 0; j < W; ++j) {
    std::uint8_t *plane = dst + j * m;
    for (std::size_t i = 0; i < m; ++i) plane[i] = src[i * W + j];
  }
}

// All planes in one pass: each output element is written whole (one store per element, no
// strided read-modify-write of cache lines), which the compiler turns into byte unpacks.
template <unsigned W>
void join(const std::uint8_t *src, std::size_t m, std::uint8_t *dst) {
  if constexpr (W == 2) {
    const std::uint8_t *p0 = src, *p1 = src + m;
    std::size_t i = 0;
#if defined(__SSE2__)
    // GCC vectorises the scalar loop poorly for two planes (6 GB/s here); byte unpacks run at memory speed.
    for (; i + 16 <= m; i += 16) {
      const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p0 + i));
      const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p1 + i));
      _mm_storeu_si128(reinterpret_cast<__m128i *>(dst + 2 * i), _mm_unpacklo_epi8(lo, hi));
      _mm_storeu_si128(reinterpret_cast<__m128i *>(dst + 2 * i + 16), _mm_unpackhi_epi8(lo, hi));
    }
#endif
    for (; i < m; ++i) {
      const auto v = static_cast<std::uint16_t>(p0[i] | (p1[i] << 8));  // little-endian element
      std::memcpy(dst + 2 * i, &v, 2);
    }
  } else {
    const std::uint8_t *p0 = src, *p1 = src + m, *p2 = src + 2 * m, *p3 = src + 3 * m;
    for (std::size_t i = 0; i < m; ++i) {
      dst[4 * i] = p0[i];
      dst[4 * i + 1] = p1[i];
      dst[4 * i + 2] = p2[i];
      dst[4 * i + 3] = p3[i];
    }
  }
}

}  // namespace

unsigned filter_width(format::Filter f) {
  switch (f) {
    case format::Filter::kNone: return 0;
    case format::Filter::kBf16:
    case format::Filter::kFp16: return 2;
    case format::Filter::kFp32: return 4;
  }
  throw FormatError(fmt::format("unknown filter id {}", static_cast<unsigned>(f)));
}

std::string_view filter_name(format::Filter f) noexcept {
  switch (f) {
    case format::Filter::kNone: return "none";
    case format::Filter::kBf16: return "bf16";
    case format::Filter::kFp16: return "fp16";
    case format::Filter::kFp32: return "fp32";
  }
  return "unknown";
}

std::optional<format::Filter> filter_for_dtype(std::string_view dtype) noexcept {
  if (dtype == "BF16") return format::Filter::kBf16;
  if (dtype == "F16") return format::Filter::kFp16;
  if (dtype == "F32") return format::Filter::kFp32;
  return std::nullopt;
}

void apply_filter(format::Filter f, unsigned phase, std::span<const std::uint8_t> raw, std::span<std::uint8_t> out) {
  const unsigned w = filter_width(f);
  if (w == 0 || phase >= w || phase > raw.size() || out.size() != raw.size() + 1)
    throw InternalError("apply_filter: bad arguments");
  const std::size_t m = (raw.size() - phase) / w;
  const std::size_t tail = phase + m * w;
  // Pointer arithmetic on data(), never &span[i] at the end (UB, and fatal with _GLIBCXX_ASSERTIONS);
  // copy_n instead of memcpy because an empty span may have a null data().
  std::uint8_t *dst = out.data() + 1;
  out[0] = static_cast<std::uint8_t>(phase);
  std::copy_n(raw.data(), phase, dst);
  if (w == 2)
    split<2>(raw.data() + phase, m, dst + phase);
  else
    split<4>(raw.data() + phase, m, dst + phase);
  std::copy_n(raw.data() + tail, raw.size() - tail, dst + tail);
}

void undo_filter(format::Filter f, std::span<const std::uint8_t> filtered, std::span<std::uint8_t> out) {
  const unsigned w = filter_width(f);
  if (w == 0 || filtered.size() != out.size() + 1) throw InternalError("undo_filter: bad arguments");
  const unsigned phase = filtered[0];
  if (phase >= w || phase > out.size()) throw IntegrityError(fmt::format("filter phase {} out of range", phase));
  const std::size_t m = (out.size() - phase) / w;
  const std::size_t tail = phase + m * w;
  const std::uint8_t *src = filtered.data() + 1;
  std::copy_n(src, phase, out.data());
  if (w == 2)
    join<2>(src + phase, m, out.data() + phase);
  else
    join<4>(src + phase, m, out.data() + phase);
  std::copy_n(src + tail, out.size() - tail, out.data() + tail);
}

}  // namespace torshpkg
