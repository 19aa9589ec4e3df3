// The entries of one Philox call as the grouped kernels read them (csrc/grouped.cu), for host and
// device, so that tests/grouped_entries.cpp builds the same code with g++ and checks it against
// nola_kernels.nola_basis bit for bit.
#pragma once

#include "philox.cuh"

namespace nola {

// Call c of basis matrix i holds entries c * kCount + e, e < kCount, at counter word 0 = c.
template <Distribution D>
struct CallEntries;

template <>
struct CallEntries<Distribution::kUniform> {
  static constexpr int kCount = 4;
  NOLA_HOST_DEVICE static float value(const Words& words, int e) { return uniform_value(words.x[e]); }
};

template <>
struct CallEntries<Distribution::kRademacher> {
  static constexpr int kCount = 128;
  NOLA_HOST_DEVICE static float value(const Words& words, int e) { return rademacher_value(words.x[e / 32], e % 32); }
};

}  // namespace nola
