// The official CUDA layout families (docs/spec.md, "Official CUDA layout families";
// nola_kernels/official_rng.py): the official NOLA code's torch.cuda uniform_(-1, 1) basis, entry
// li = i * numel + n of a (k, numel) basis drawn by T threads. For host and device, so that
// csrc/host_basis.cpp builds the kernels' code with g++ and checks it against
// nola_kernels.official_rng bit for bit.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "philox.cuh"

namespace nola {

// The dtype the official code draws its basis in, which rounds the float32 draw.
enum class OfficialDtype : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

constexpr uint32_t kOfficialBlockThreads = 256;  // torch's launch block for random fills

// One official family: the seed (Philox's key), the resident threads of the GPU whose layout it
// is, the dtype and the uniform rule (legacy: a half-precision value that rounds to 1 stays 1).
struct OfficialFamily {
  uint64_t seed;
  uint32_t resident_threads;  // a multiple of 256, below 2^31
  OfficialDtype dtype;
  bool legacy;

  NOLA_HOST_DEVICE RoundKeys round_keys() const {
    return RoundKeys::of(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  }

  // T of a basis of `entries` entries: 256 threads a block, one entry a thread up to the
  // resident threads (at least one block: an empty basis has no entries to place).
  NOLA_HOST_DEVICE uint32_t threads(uint64_t entries) const {
    const uint64_t blocks = (entries + kOfficialBlockThreads - 1) / kOfficialBlockThreads;
    const uint64_t launched = (blocks > 0 ? blocks : 1) * kOfficialBlockThreads;
    return static_cast<uint32_t>(launched < resident_threads ? launched : resident_threads);
  }
};

// Flat index li = stripe * T + thread: entry li is word stripe % 4 of the Philox call at counter
// (stripe / 4, 0, thread, 0). stripe stays below 2^32 for bases of at most 2^40 entries.
struct OfficialCursor {
  uint32_t stripe, thread;

  NOLA_HOST_DEVICE static OfficialCursor at(uint64_t li, uint32_t threads) {
    return OfficialCursor{static_cast<uint32_t>(li / threads), static_cast<uint32_t>(li % threads)};
  }

  // li += stride, without a 64-bit division: stride's (stripes, threads) as `at` splits it.
  NOLA_HOST_DEVICE void advance(const OfficialCursor& stride, uint32_t threads) {
    stripe += stride.stripe;
    thread += stride.thread;  // below 2T < 2^32
    if (thread >= threads) {
      thread -= threads;
      ++stripe;
    }
  }
};

NOLA_HOST_DEVICE uint32_t bits_of_float(float value) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(value);
#else
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
#endif
}

// The float32 draw of one word as torch's CUDA uniform_(-1, 1) makes it: u = fl32(word) * 2^-32
// + 2^-33 in (0, 1] and 2u - 1, each rounded once to float32 (the products by powers of two are
// exact, so a fused multiply-add rounds alike); the upper bound 1 becomes -1.
NOLA_HOST_DEVICE float official_uniform(uint32_t word) {
  const float u = static_cast<float>(word) * 0x1p-32f + 0x1p-33f;
  const float value = u * 2.0f - 1.0f;
  return value == 1.0f ? -1.0f : value;
}

// value rounded to bfloat16 to nearest even, as float32; on the bits, which the draws (finite)
// allow, so host and device round alike.
NOLA_HOST_DEVICE float round_to_bfloat16(float value) {
  const uint32_t bits = bits_of_float(value);
  return float_from_bits((bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u);
}

// value (|value| <= 1) rounded to float16 to nearest even, as float32: 11 significant bits, and
// below 2^-14 (float16's subnormals) a multiple of 2^-24.
NOLA_HOST_DEVICE float round_to_float16(float value) {
  const uint32_t bits = bits_of_float(value);
  const uint32_t sign = bits & 0x80000000u;
  const float magnitude = float_from_bits(bits ^ sign);
  if (magnitude < 0x1p-14f) {
    // The floats in [0.5, 1) are the multiples of 2^-24: the sum rounds the magnitude to one, and
    // the subtraction is exact.
    return float_from_bits(bits_of_float((magnitude + 0.5f) - 0.5f) | sign);
  }
  return float_from_bits((bits + 0xFFFu + ((bits >> 13) & 1u)) & 0xFFFFE000u);
}

// An official family's entry from its word: the draw rounded to the dtype and, under the
// current rule, a half-precision 1 mapped to -1 (float32 draws are never 1 after official_uniform).
template <OfficialDtype kDtype, bool kLegacy>
NOLA_HOST_DEVICE float official_value(uint32_t word) {
  float value = official_uniform(word);
  if constexpr (kDtype == OfficialDtype::kBFloat16) value = round_to_bfloat16(value);
  if constexpr (kDtype == OfficialDtype::kFloat16) value = round_to_float16(value);
  if constexpr (kDtype != OfficialDtype::kFloat32 && !kLegacy) value = value == 1.0f ? -1.0f : value;
  return value;
}

// The entry at `cursor`, unscaled: its own Philox4x32-10 call under the seed's round keys.
template <OfficialDtype kDtype, bool kLegacy>
NOLA_HOST_DEVICE float official_entry(const RoundKeys& keys, const OfficialCursor& cursor) {
  const Words words = philox4x32<kDefaultRounds>(cursor.stripe >> 2, 0u, cursor.thread, 0u, keys);
  return official_value<kDtype, kLegacy>(word_at(words, static_cast<int>(cursor.stripe & 3)));
}

// f(std::integral_constant<OfficialDtype, D>{}, std::bool_constant<L>{}) for the family's dtype
// and rule (host code; float32 has one rule). An unknown dtype code throws std::invalid_argument.
template <typename F>
inline auto with_official_rounding(const OfficialFamily& family, F&& f) {
  using Float32 = std::integral_constant<OfficialDtype, OfficialDtype::kFloat32>;
  using BFloat16 = std::integral_constant<OfficialDtype, OfficialDtype::kBFloat16>;
  using Float16 = std::integral_constant<OfficialDtype, OfficialDtype::kFloat16>;
  switch (family.dtype) {
    case OfficialDtype::kFloat32:
      return f(Float32{}, std::false_type{});
    case OfficialDtype::kBFloat16:
      return family.legacy ? f(BFloat16{}, std::true_type{}) : f(BFloat16{}, std::false_type{});
    case OfficialDtype::kFloat16:
      return family.legacy ? f(Float16{}, std::true_type{}) : f(Float16{}, std::false_type{});
  }
  throw std::invalid_argument("unknown nola::OfficialDtype code " + std::to_string(static_cast<int>(family.dtype)));
}

}  // namespace nola
