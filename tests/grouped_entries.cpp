// csrc/grouped_entries.cuh built for the host as a C library, so tests/test_cuda_host.py can compare
// the entries the kernels read from each Philox call with nola_kernels.nola_basis bit for bit.
#include <cstdint>
#include <stdexcept>

#include "grouped_entries.cuh"

extern "C" {

// Entries of basis indices [i_start, i_start + count) at the positions of calls
// [first_call, first_call + calls), row-major (index, position); distribution is a
// nola::Distribution code. Returns 0, or -1 (nothing written) for a code that names no
// distribution: the exception must not cross this C interface.
int nola_grouped_entries(uint64_t seed, uint64_t stream, int distribution, uint32_t i_start, uint32_t count,
                         uint64_t first_call, uint64_t calls, float* out) {
  const nola::Family family = nola::Family::of(seed, stream);
  try {
    nola::with_distribution(static_cast<nola::Distribution>(distribution), [&](auto d) {
      using Entries = nola::CallEntries<decltype(d)::value>;
      const uint64_t numel = calls * Entries::kCount;
      for (uint32_t i = 0; i < count; ++i) {
        for (uint64_t c = 0; c < calls; ++c) {
          const nola::Words words = Entries::call(family, static_cast<uint32_t>(first_call + c), i_start + i);
          for (int e = 0; e < Entries::kCount; ++e) out[i * numel + c * Entries::kCount + e] = Entries::value(words, e);
        }
      }
    });
  } catch (const std::invalid_argument&) {
    return -1;
  }
  return 0;
}
}
