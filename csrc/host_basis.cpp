// The Philox and official-family headers built for the host as a C shared library, so
// tests/test_cuda_host.py can load it with ctypes and compare it with nola_kernels.nola_basis and
// nola_kernels.official_rng bit for bit.
#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include "official.cuh"
#include "philox.cuh"

namespace {

// out = the words of call(std::integral_constant<int, Rounds>{}) for Rounds = `rounds`; returns 0,
// or -1 for a round count not built here.
template <typename Call>
int store_words(int rounds, Call&& call, uint32_t* out) {
  nola::Words words;
  if (rounds == 7) {
    words = call(std::integral_constant<int, 7>{});
  } else if (rounds == 10) {
    words = call(std::integral_constant<int, 10>{});
  } else {
    return -1;
  }
  for (int w = 0; w < 4; ++w) out[w] = words.x[w];
  return 0;
}

}  // namespace

extern "C" {

// The four words of one Philox4x32 call, the key schedule added up round by round; returns 0, or
// -1 for a round count not built here.
int nola_philox_words(int rounds, const uint32_t* counter, const uint32_t* key, uint32_t* out) {
  return store_words(
      rounds,
      [&](auto r) {
        return nola::philox4x32<decltype(r)::value>(counter[0], counter[1], counter[2], counter[3], key[0], key[1]);
      },
      out);
}

// The same call as the generate.cu kernels make it: counter words 2 and 3 and the key as a basis
// family, whose round keys the host computes once with counter word 2 folded in
// (Family::folded_round_keys), so the kernels' counter word 2 is 0.
int nola_philox_round_key_words(int rounds, const uint32_t* counter, const uint32_t* key, uint32_t* out) {
  const nola::Family family{key[0], key[1], counter[2], counter[3]};
  const nola::RoundKeys keys = family.folded_round_keys();
  return store_words(
      rounds,
      [&](auto r) { return nola::philox4x32<decltype(r)::value>(counter[0], counter[1], 0u, family.stream1, keys); },
      out);
}

// The uniform value of one Philox word.
float nola_uniform_value(uint32_t word) { return nola::uniform_value(word); }

// The uniform16 value of half `half` (0: the low 16 bits) of one Philox word.
float nola_uniform16_value(uint32_t word, int half) { return nola::uniform16_value(word, half); }

// The default mix scale of k basis matrices.
float nola_default_mix_scale(uint64_t k) { return nola::default_mix_scale(k); }

// Entries (i, n) for i in [i_start, i_start + count) and n in [n_start, n_start + numel), row-major;
// distribution is a nola::Distribution code. Returns 0, or -1 (nothing written) for a code that
// names no distribution: the exception must not cross this C interface.
int nola_basis_block(uint64_t seed, uint64_t stream, uint32_t i_start, uint32_t count, uint64_t n_start,
                     uint64_t numel, int distribution, float* out) {
  const nola::Family family = nola::Family::of(seed, stream);
  try {
    nola::with_distribution(static_cast<nola::Distribution>(distribution), [&](auto d) {
      for (uint32_t i = 0; i < count; ++i) {
        for (uint64_t n = 0; n < numel; ++n) {
          out[i * numel + n] = nola::basis_entry<decltype(d)::value>(family, i_start + i, n_start + n);
        }
      }
    });
  } catch (const std::invalid_argument&) {
    return -1;
  }
  return 0;
}

// Entries (i, n) for i in [i_start, i_start + count) and n in [n_start, n_start + block_numel) of
// an official family's (k, numel) basis, row-major and unscaled: one cursor a position, stepped
// from matrix to matrix as csrc/official.cu steps them. Returns 0, or -1 (nothing written) for a
// dtype code that names no nola::OfficialDtype.
int nola_official_block(const nola::OfficialFamily* family, uint64_t k, uint64_t numel, uint32_t i_start,
                        uint32_t count, uint64_t n_start, uint64_t block_numel, float* out) {
  const nola::RoundKeys keys = family->round_keys();
  const uint32_t threads = family->threads(k * numel);
  const nola::OfficialCursor stride = nola::OfficialCursor::at(numel, threads);
  try {
    nola::with_official_rounding(*family, [&](auto dtype, auto legacy) {
      for (uint64_t n = 0; n < block_numel; ++n) {
        nola::OfficialCursor cursor = nola::OfficialCursor::at(i_start * numel + n_start + n, threads);
        for (uint32_t i = 0; i < count; ++i, cursor.advance(stride, threads)) {
          out[i * block_numel + n] = nola::official_entry<decltype(dtype)::value, decltype(legacy)::value>(keys, cursor);
        }
      }
    });
  } catch (const std::invalid_argument&) {
    return -1;
  }
  return 0;
}
}
