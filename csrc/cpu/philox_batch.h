// Basis entries of whole runs of Philox calls, in position order: the one place where the CPU
// kernels generate. Two implementations with identical results (integer arithmetic, then exact
// value maps): a portable one built on the header's scalar philox4x32, which the compiler
// vectorizes as it can, and an AVX2 one with intrinsics, chosen at run time where the processor
// has AVX2. gcc 12 vectorizes the portable loop with cross-lane shuffles around every 32x32->64
// multiply; the explicit even/odd vpmuludq and blends below ran 3.3x faster on this project's AMD
// EPYC (csrc/README.md). Both take Philox's round count as a template parameter (10 for v1's
// distributions, 7 for v1.1's).
#pragma once

#include <cstdint>

#include "../philox.cuh"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define NOLA_CPU_HAVE_AVX2 1
#endif

namespace nola::cpu {

// Calls per step of the generators: two AVX2 vectors of 8 lanes, so that two independent
// dependency chains hide the multiplies' latency.
constexpr uint32_t kStepCalls = 16;

// What the words of a call become (docs/spec.md, "Distributions"): a uniform per word (24 bits),
// a uniform per half word (16 bits, the low half first), or a sign per bit.
enum class Entries { kUniform24, kUniform16, kSigns };

// log2 of the entries per call: counter word 0 is n >> counter_shift.
constexpr int counter_shift(Entries entries) {
  return entries == Entries::kUniform24 ? kUniformCounterShift
         : entries == Entries::kUniform16 ? 3
                                          : kRademacherCounterShift;
}

// uniform16: (m - 2^15) * 2^-15 with m = half | 1; m - 2^15 has at most 16 bits, so the
// conversion and the power-of-2 multiply are exact.
inline float uniform16_value(uint32_t half) {
  return static_cast<float>(static_cast<int32_t>(half | 1u) - (1 << 15)) * (1.0f / (1 << 15));
}

// Entries of calls first_call + [0, calls) of basis matrix `index`: a run covers whole calls, and
// `calls` is a multiple of kStepCalls. Counter word 0 wraps past 2^32 - 1, which only calls
// beyond the last position reach; their entries are never used.
struct PortableBatch {
  template <Entries E, int Rounds>
  static void generate(const Family& family, uint32_t first_call, uint32_t calls, uint32_t index, float* out) {
    for (uint32_t j = 0; j < calls; ++j) {
      const Words w = family.call<Rounds>(first_call + j, index);
      float* entries = out + (uint64_t{j} << counter_shift(E));
      for (int t = 0; t < 4; ++t) {
        if constexpr (E == Entries::kUniform24) {
          entries[t] = uniform_value(w.x[t]);
        } else if constexpr (E == Entries::kUniform16) {
          entries[2 * t] = uniform16_value(w.x[t] & 0xffffu);
          entries[2 * t + 1] = uniform16_value(w.x[t] >> 16);
        } else {
          for (int bit = 0; bit < 32; ++bit) entries[32 * t + bit] = rademacher_value(w.x[t], bit);
        }
      }
    }
  }
};

#ifdef NOLA_CPU_HAVE_AVX2
struct Avx2Batch {
  // hi and lo words of a * m in each 32-bit lane (m broadcast): vpmuludq multiplies the even
  // lanes, a shift brings the odd lanes down, and two blends put the halves back in place.
  [[gnu::target("avx2")]] static void mul_wide(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
    const __m256i even = _mm256_mul_epu32(a, m);
    const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  }

  // The words of calls first_call + [0, 16): word t of call 8 v + lane in x[t][v].
  template <int Rounds>
  [[gnu::target("avx2")]] static void philox16(const Family& family, uint32_t first_call, uint32_t index,
                                               __m256i x[4][2]) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int v = 0; v < 2; ++v) {
      x[0][v] = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(first_call + 8 * v)), lane);
      x[1][v] = _mm256_set1_epi32(static_cast<int>(index));
      x[2][v] = _mm256_set1_epi32(static_cast<int>(family.stream0));
      x[3][v] = _mm256_set1_epi32(static_cast<int>(family.stream1));
    }
    const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kMultiplier0));
    const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kMultiplier1));
    uint32_t k0 = family.key0, k1 = family.key1;
#pragma GCC unroll 10
    for (int round = 0; round < Rounds; ++round) {
      const __m256i key0 = _mm256_set1_epi32(static_cast<int>(k0)), key1 = _mm256_set1_epi32(static_cast<int>(k1));
      for (int v = 0; v < 2; ++v) {
        __m256i hi0, lo0, hi1, lo1;
        mul_wide(x[0][v], m0, hi0, lo0);
        mul_wide(x[2][v], m1, hi1, lo1);
        x[0][v] = _mm256_xor_si256(_mm256_xor_si256(hi1, x[1][v]), key0);
        x[1][v] = lo1;
        x[2][v] = _mm256_xor_si256(_mm256_xor_si256(hi0, x[3][v]), key1);
        x[3][v] = lo0;
      }
      k0 += kKeyBump0;
      k1 += kKeyBump1;
    }
  }

  // uniform_value lane by lane: the float 2 + (x >> 9) 2^-22, minus 3, plus 2^-23.
  [[gnu::target("avx2")]] static __m256 uniform_values(__m256i word) {
    const __m256i two = _mm256_set1_epi32(0x40000000);
    const __m256 bits = _mm256_castsi256_ps(_mm256_or_si256(_mm256_srli_epi32(word, 9), two));
    return _mm256_add_ps(_mm256_sub_ps(bits, _mm256_set1_ps(3.0f)), _mm256_set1_ps(1.0f / (1 << 23)));
  }

  // Word-major vectors (w[t] = word t of 8 calls) to call-major ones: calls[c] holds the 4 words
  // of calls 2 c and 2 c + 1, in position order.
  [[gnu::target("avx2")]] static void to_call_order(const __m256 w[4], __m256 calls[4]) {
    const __m256 t0 = _mm256_unpacklo_ps(w[0], w[1]), t1 = _mm256_unpacklo_ps(w[2], w[3]);
    const __m256 t2 = _mm256_unpackhi_ps(w[0], w[1]), t3 = _mm256_unpackhi_ps(w[2], w[3]);
    const __m256 calls04 = _mm256_shuffle_ps(t0, t1, 0x44), calls15 = _mm256_shuffle_ps(t0, t1, 0xEE);
    const __m256 calls26 = _mm256_shuffle_ps(t2, t3, 0x44), calls37 = _mm256_shuffle_ps(t2, t3, 0xEE);
    calls[0] = _mm256_permute2f128_ps(calls04, calls15, 0x20);
    calls[1] = _mm256_permute2f128_ps(calls26, calls37, 0x20);
    calls[2] = _mm256_permute2f128_ps(calls04, calls15, 0x31);
    calls[3] = _mm256_permute2f128_ps(calls26, calls37, 0x31);
  }

  // The 32 uniform entries of 8 calls (word t of call `lane` in x[t]).
  [[gnu::target("avx2")]] static void store_uniform24(const __m256i x[4], float* out) {
    const __m256 w[4] = {uniform_values(x[0]), uniform_values(x[1]), uniform_values(x[2]), uniform_values(x[3])};
    __m256 calls[4];
    to_call_order(w, calls);
    for (int c = 0; c < 4; ++c) _mm256_storeu_ps(out + 8 * c, calls[c]);
  }

  // The 64 uniform16 entries of 8 calls: in call order, a call's 4 words are its 8 half words in
  // position order (low half first: little endian), widened to 32 bits and mapped as
  // uniform16_value does.
  [[gnu::target("avx2")]] static void store_uniform16(const __m256i x[4], float* out) {
    const __m256 w[4] = {_mm256_castsi256_ps(x[0]), _mm256_castsi256_ps(x[1]), _mm256_castsi256_ps(x[2]),
                         _mm256_castsi256_ps(x[3])};
    __m256 calls[4];
    to_call_order(w, calls);
    const __m256i one = _mm256_set1_epi32(1), middle = _mm256_set1_epi32(1 << 15);
    const __m256 ulp = _mm256_set1_ps(1.0f / (1 << 15));
    for (int c = 0; c < 4; ++c) {
      const __m256i words = _mm256_castps_si256(calls[c]);
      const __m128i halves[2] = {_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1)};
      for (int h = 0; h < 2; ++h) {
        const __m256i m = _mm256_or_si256(_mm256_cvtepu16_epi32(halves[h]), one);
        _mm256_storeu_ps(out + 16 * c + 8 * h, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(m, middle)), ulp));
      }
    }
  }

  // Entry 32 t + b of a call is +-1 by bit b of word t: shifted to the sign bit and or-ed into 1.0f.
  template <int Rounds>
  [[gnu::target("avx2")]] static void signs(const Family& family, uint32_t first_call, uint32_t calls,
                                            uint32_t index, float* out) {
    const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
    const __m256i one = _mm256_castps_si256(_mm256_set1_ps(1.0f));
    __m256i to_sign[4];  // left shifts that move bit 8 v + lane to the sign bit
    for (int v = 0; v < 4; ++v) {
      to_sign[v] = _mm256_sub_epi32(_mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24), _mm256_set1_epi32(8 * v));
    }
    for (uint32_t step = 0; step < calls; step += kStepCalls) {
      __m256i x[4][2];
      philox16<Rounds>(family, first_call + step, index, x);
      alignas(32) uint32_t words[4][kStepCalls];
      for (int t = 0; t < 4; ++t) {
        for (int v = 0; v < 2; ++v) _mm256_store_si256(reinterpret_cast<__m256i*>(words[t] + 8 * v), x[t][v]);
      }
      for (uint32_t j = 0; j < kStepCalls; ++j) {
        for (int t = 0; t < 4; ++t) {
          const __m256i word = _mm256_set1_epi32(static_cast<int>(words[t][j]));
          float* entries = out + 128 * (step + j) + 32 * t;
          for (int v = 0; v < 4; ++v) {
            const __m256i bits = _mm256_and_si256(_mm256_sllv_epi32(word, to_sign[v]), sign);
            _mm256_storeu_ps(entries + 8 * v, _mm256_castsi256_ps(_mm256_or_si256(bits, one)));
          }
        }
      }
    }
  }

  template <Entries E, int Rounds>
  [[gnu::target("avx2")]] static void generate(const Family& family, uint32_t first_call, uint32_t calls,
                                               uint32_t index, float* out) {
    if constexpr (E == Entries::kSigns) {
      signs<Rounds>(family, first_call, calls, index, out);
    } else {
      for (uint32_t step = 0; step < calls; step += kStepCalls) {
        __m256i x[4][2];
        philox16<Rounds>(family, first_call + step, index, x);
        for (int v = 0; v < 2; ++v) {
          const __m256i words[4] = {x[0][v], x[1][v], x[2][v], x[3][v]};
          float* entries = out + (uint64_t{step + 8 * v} << counter_shift(E));
          if constexpr (E == Entries::kUniform24) {
            store_uniform24(words, entries);
          } else {
            store_uniform16(words, entries);
          }
        }
      }
    }
  }
};
#endif

}  // namespace nola::cpu
