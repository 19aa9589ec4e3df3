// NOLA-Philox v1.1 (docs/spec.md): Philox4x32 and the basis distributions, for host and device.
// Plain C++ when not compiled by nvcc, so the host test builds it with g++ and checks it against
// nola_kernels.nola_basis bit for bit.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#ifdef __CUDACC__
#define NOLA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define NOLA_HOST_DEVICE inline
#endif

namespace nola {

constexpr uint32_t kMultiplier0 = 0xD2511F53u;
constexpr uint32_t kMultiplier1 = 0xCD9E8D57u;
constexpr uint32_t kKeyBump0 = 0x9E3779B9u;
constexpr uint32_t kKeyBump1 = 0xBB67AE85u;
constexpr int kDefaultRounds = 10;

// v1's two distributions (Philox4x32-10), then v1.1's (Philox4x32-7). Entries per Philox call:
// one float per word (uniform), one per 16-bit half word (uniform16) or one sign per bit
// (rademacher); counter word 0 is n >> counter_shift.
enum class Distribution : int { kUniform = 0, kRademacher = 1, kUniform16Philox7 = 2, kRademacherPhilox7 = 3 };
constexpr int kUniformCounterShift = 2;
constexpr int kUniform16CounterShift = 3;
constexpr int kRademacherCounterShift = 7;

NOLA_HOST_DEVICE constexpr bool is_rademacher(Distribution d) {
  return d == Distribution::kRademacher || d == Distribution::kRademacherPhilox7;
}
NOLA_HOST_DEVICE constexpr int rounds_of(Distribution d) {
  return d == Distribution::kUniform16Philox7 || d == Distribution::kRademacherPhilox7 ? 7 : kDefaultRounds;
}
NOLA_HOST_DEVICE constexpr int counter_shift(Distribution d) {
  return is_rademacher(d) ? kRademacherCounterShift
                          : d == Distribution::kUniform16Philox7 ? kUniform16CounterShift : kUniformCounterShift;
}

struct Words {
  uint32_t x[4];
};

// Word x (0..3) of a call's words, by selects: an indexed read of a register array would go
// through local memory on the GPU.
NOLA_HOST_DEVICE uint32_t word_at(const Words& w, int x) {
  return x & 2 ? (x & 1 ? w.x[3] : w.x[2]) : (x & 1 ? w.x[1] : w.x[0]);
}

NOLA_HOST_DEVICE uint32_t mul_hi(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// One Philox4x32 round of (c0, c1, c2, c3) under the round's key (k0, k1), as Random123 defines it.
NOLA_HOST_DEVICE void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0, uint32_t k1) {
  const uint32_t hi0 = mul_hi(kMultiplier0, c0), lo0 = kMultiplier0 * c0;
  const uint32_t hi1 = mul_hi(kMultiplier1, c2), lo1 = kMultiplier1 * c2;
  c0 = hi1 ^ c1 ^ k0;
  c1 = lo1;
  c2 = hi0 ^ c3 ^ k1;
  c3 = lo0;
}

// Philox4x32-Rounds of counter (c0, c1, c2, c3) under key (k0, k1), as Random123 defines it.
template <int Rounds = kDefaultRounds>
NOLA_HOST_DEVICE Words philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                  uint32_t k1) {
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
  for (int round = 0; round < Rounds; ++round) {
    philox_round(c0, c1, c2, c3, k0, k1);
    k0 += kKeyBump0;
    k1 += kKeyBump1;
  }
  return Words{{c0, c1, c2, c3}};
}

// The key of each round (key + round * bump), computed once on the host: a kernel that reads them
// from its parameters spends no instructions on the key schedule in its loops.
struct RoundKeys {
  uint32_t key0[kDefaultRounds], key1[kDefaultRounds];

  NOLA_HOST_DEVICE static RoundKeys of(uint32_t k0, uint32_t k1) {
    RoundKeys keys{};
    for (int round = 0; round < kDefaultRounds; ++round) {
      keys.key0[round] = k0 + static_cast<uint32_t>(round) * kKeyBump0;
      keys.key1[round] = k1 + static_cast<uint32_t>(round) * kKeyBump1;
    }
    return keys;
  }

  // The round keys of counters (c0, c1, s0, c3) with word s0 fixed, folded into the first two
  // rounds' keys so that philox4x32(c0, c1, 0, c3, folded) equals philox4x32(c0, c1, s0, c3, keys):
  // round 1's product of s0 is then made once, on the host, instead of in every basis loop.
  NOLA_HOST_DEVICE static RoundKeys with_word2(uint32_t k0, uint32_t k1, uint32_t s0) {
    RoundKeys keys = of(k0, k1);
    keys.key0[0] ^= mul_hi(kMultiplier1, s0);  // round 1's c0 = mulhi(M1, s0) ^ c1 ^ key0[0]
    keys.key0[1] ^= kMultiplier1 * s0;         // round 1's c1 = M1 * s0 only enters round 2's c0
    return keys;
  }
};

// philox4x32 with the round keys given.
template <int Rounds = kDefaultRounds>
NOLA_HOST_DEVICE Words philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, const RoundKeys& keys) {
  static_assert(Rounds <= kDefaultRounds, "RoundKeys holds kDefaultRounds rounds");
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
  for (int round = 0; round < Rounds; ++round) philox_round(c0, c1, c2, c3, keys.key0[round], keys.key1[round]);
  return Words{{c0, c1, c2, c3}};
}

// One basis family (seed, stream): the key and the two counter words that every call shares.
struct Family {
  uint32_t key0, key1, stream0, stream1;

  NOLA_HOST_DEVICE static Family of(uint64_t seed, uint64_t stream) {
    return Family{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                  static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32)};
  }

  // The words of call `call` (n >> counter shift) of basis matrix `index`.
  template <int Rounds = kDefaultRounds>
  NOLA_HOST_DEVICE Words call(uint32_t call, uint32_t index) const {
    return philox4x32<Rounds>(call, index, stream0, stream1, key0, key1);
  }

  // The round keys with stream0 folded in: call(c, index) is philox4x32(c, index, 0, stream1, these).
  NOLA_HOST_DEVICE RoundKeys folded_round_keys() const { return RoundKeys::with_word2(key0, key1, stream0); }
};

NOLA_HOST_DEVICE float float_from_bits(uint32_t bits) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
#endif
}

// uniform: (m - 2^23) * 2^-23 with m = (x >> 8) | 1 = 2 (x >> 9) + 1, i.e. (x >> 9) * 2^-22 - 1 + 2^-23.
// Built from the float 2 + (x >> 9) * 2^-22 (exponent bits of 2, x >> 9 as mantissa) with two exact
// subtractions and no int-to-float conversion, which runs at a quarter of the integer rate on GPUs.
NOLA_HOST_DEVICE float uniform_value(uint32_t word) {
  constexpr uint32_t kTwoBits = 0x40000000u;  // 2.0f
  constexpr float kHalfUlp = 1.0f / (1 << 23);
  return (float_from_bits(kTwoBits | (word >> 9)) - 3.0f) + kHalfUlp;
}

// uniform16: half h of a word (h = 0: bits 0..15) gives (m - 2^15) * 2^-15 with m = half | 1. The
// float 2 + m * 2^-22 (exponent bits of 2, m as the low mantissa bits) times 128, less 257, is that
// value with one exact FMA; setting both halves' bit 0 at once leaves one integer op per half.
NOLA_HOST_DEVICE float uniform16_value(uint32_t word, int half) {
  constexpr uint32_t kTwoBits = 0x40000000u;  // 2.0f
  const uint32_t odd = word | 0x00010001u;
  const float carrier = float_from_bits(kTwoBits | (half ? odd >> 16 : odd & 0xffffu));
  return carrier * 128.0f - 257.0f;
}

// rademacher: bit b of a word is the sign of entry b (0 gives +1).
NOLA_HOST_DEVICE float rademacher_value(uint32_t word, int bit) {
  return ((word >> bit) & 1u) ? -1.0f : 1.0f;
}

// v * (+1 or -1) without a multiply: bit b of the word flips the sign bit of v.
NOLA_HOST_DEVICE float apply_sign_bit(float v, uint32_t word, int bit) {
#ifdef __CUDA_ARCH__
  return __int_as_float(__float_as_int(v) ^ static_cast<int>(((word >> bit) & 1u) << 31));
#else
  return ((word >> bit) & 1u) ? -v : v;
#endif
}

// The default mix scale 1/sqrt(k), rounded once from double like the Python API's
// float(1.0 / math.sqrt(k)), so the fused and composed paths scale bit for bit alike.
inline float default_mix_scale(uint64_t k) {
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(k)));
}

// f(std::integral_constant<Distribution, D>{}) for the runtime distribution D (host code). A code
// that names no distribution (a raw int cast to Distribution) throws std::invalid_argument rather
// than generating some other distribution's values.
template <typename F>
inline auto with_distribution(Distribution distribution, F&& f) {
  switch (distribution) {
    case Distribution::kUniform:
      return f(std::integral_constant<Distribution, Distribution::kUniform>{});
    case Distribution::kRademacher:
      return f(std::integral_constant<Distribution, Distribution::kRademacher>{});
    case Distribution::kUniform16Philox7:
      return f(std::integral_constant<Distribution, Distribution::kUniform16Philox7>{});
    case Distribution::kRademacherPhilox7:
      return f(std::integral_constant<Distribution, Distribution::kRademacherPhilox7>{});
  }
  throw std::invalid_argument("unknown nola::Distribution code " + std::to_string(static_cast<int>(distribution)));
}

// Entry e < 2^counter_shift(D) of the words of one call.
template <Distribution D>
NOLA_HOST_DEVICE float call_entry(const Words& w, int e) {
  if constexpr (D == Distribution::kUniform) {
    return uniform_value(w.x[e]);
  } else if constexpr (D == Distribution::kUniform16Philox7) {
    return uniform16_value(w.x[e / 2], e % 2);
  } else {
    return rademacher_value(w.x[e / 32], e % 32);
  }
}

// Entry n of basis matrix `index`: the scalar definition, for tests and edges.
template <Distribution D>
NOLA_HOST_DEVICE float basis_entry(const Family& family, uint32_t index, uint64_t n) {
  constexpr int kShift = counter_shift(D);
  const Words w = family.call<rounds_of(D)>(static_cast<uint32_t>(n >> kShift), index);
  return call_entry<D>(w, static_cast<int>(n & ((1u << kShift) - 1)));
}

}  // namespace nola
