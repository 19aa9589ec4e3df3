// The entries of one Philox call as the kernels read them (csrc/generate.cu, csrc/grouped.cu), for
// host and device, so that tests/grouped_entries.cpp builds the same code with g++ and checks it
// against nola_kernels.nola_basis bit for bit.
#pragma once

#include "philox.cuh"

namespace nola {

// Call c of basis matrix i holds entries c * kCount + e, e < kCount, at counter word 0 = c, made
// with the distribution's Philox rounds.
template <Distribution D>
struct CallEntries {
  static constexpr int kCount = 1 << counter_shift(D);
  NOLA_HOST_DEVICE static Words call(const Family& family, uint32_t c, uint32_t index) {
    return family.call<rounds_of(D)>(c, index);
  }
  NOLA_HOST_DEVICE static float value(const Words& words, int e) { return call_entry<D>(words, e); }
};

}  // namespace nola
