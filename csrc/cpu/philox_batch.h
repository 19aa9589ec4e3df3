// Basis entries of whole runs of Philox calls, in position order: the one place where the CPU
// kernels generate. Two implementations with identical results (integer arithmetic, then the
// exact value maps of philox.cuh): a portable one built on the header's scalar philox4x32, which
// the compiler vectorizes as it can, and an AVX2 one with intrinsics, chosen at run time where
// the processor has AVX2. gcc 12 vectorizes the portable loop with cross-lane shuffles around
// every 32x32->64 multiply; the explicit even/odd vpmuludq and blends below ran 3.3x faster on
// this project's AMD EPYC (csrc/README.md).
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

// Entries per Philox call, and calls of a run: a run covers whole calls, and `calls` is a
// multiple of kStepCalls. Counter word 0 wraps past 2^32 - 1, which only calls beyond the last
// position reach; their entries are never used.
struct PortableBatch {
  static void uniform(const Family& family, uint32_t first_call, uint32_t calls, uint32_t index, float* out) {
    for (uint32_t j = 0; j < calls; ++j) {
      const Words w = family.call(first_call + j, index);
      for (int t = 0; t < 4; ++t) out[4 * j + t] = uniform_value(w.x[t]);
    }
  }

  static void rademacher(const Family& family, uint32_t first_call, uint32_t calls, uint32_t index, float* out) {
    for (uint32_t j = 0; j < calls; ++j) {
      const Words w = family.call(first_call + j, index);
      for (int t = 0; t < 4; ++t) {
        for (int bit = 0; bit < 32; ++bit) out[128 * j + 32 * t + bit] = rademacher_value(w.x[t], bit);
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
    for (int round = 0; round < kDefaultRounds; ++round) {
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

  // Word-major values (w[t] = word t of 8 calls) to position order: 4 vectors of 2 calls each.
  [[gnu::target("avx2")]] static void store_in_position_order(const __m256 w[4], float* out) {
    const __m256 t0 = _mm256_unpacklo_ps(w[0], w[1]), t1 = _mm256_unpacklo_ps(w[2], w[3]);
    const __m256 t2 = _mm256_unpackhi_ps(w[0], w[1]), t3 = _mm256_unpackhi_ps(w[2], w[3]);
    const __m256 calls04 = _mm256_shuffle_ps(t0, t1, 0x44), calls15 = _mm256_shuffle_ps(t0, t1, 0xEE);
    const __m256 calls26 = _mm256_shuffle_ps(t2, t3, 0x44), calls37 = _mm256_shuffle_ps(t2, t3, 0xEE);
    _mm256_storeu_ps(out, _mm256_permute2f128_ps(calls04, calls15, 0x20));
    _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(calls26, calls37, 0x20));
    _mm256_storeu_ps(out + 16, _mm256_permute2f128_ps(calls04, calls15, 0x31));
    _mm256_storeu_ps(out + 24, _mm256_permute2f128_ps(calls26, calls37, 0x31));
  }

  [[gnu::target("avx2")]] static void uniform(const Family& family, uint32_t first_call, uint32_t calls,
                                              uint32_t index, float* out) {
    for (uint32_t step = 0; step < calls; step += kStepCalls) {
      __m256i x[4][2];
      philox16(family, first_call + step, index, x);
      for (int v = 0; v < 2; ++v) {
        const __m256 w[4] = {uniform_values(x[0][v]), uniform_values(x[1][v]), uniform_values(x[2][v]),
                             uniform_values(x[3][v])};
        store_in_position_order(w, out + 4 * (step + 8 * v));
      }
    }
  }

  // Entry 32 t + b of a call is +-1 by bit b of word t: shifted to the sign bit and or-ed into 1.0f.
  [[gnu::target("avx2")]] static void rademacher(const Family& family, uint32_t first_call, uint32_t calls,
                                                 uint32_t index, float* out) {
    const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
    const __m256i one = _mm256_castps_si256(_mm256_set1_ps(1.0f));
    __m256i to_sign[4];  // left shifts that move bit 8 v + lane to the sign bit
    for (int v = 0; v < 4; ++v) {
      to_sign[v] = _mm256_sub_epi32(_mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24), _mm256_set1_epi32(8 * v));
    }
    for (uint32_t step = 0; step < calls; step += kStepCalls) {
      __m256i x[4][2];
      philox16(family, first_call + step, index, x);
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
};
#endif

}  // namespace nola::cpu
