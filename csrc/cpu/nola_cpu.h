// The CPU kernels' C interface: plain pointers to contiguous arrays, no torch types, so the
// library builds with any C++ compiler in seconds and loads into any torch (nola_kernels/backends/
// cpu_backend.py calls it through ctypes and mirrors NolaCpuProblem field by field).
//
// Results do not depend on `threads` or on `isa`: every sum runs in an order fixed by the
// problem's shape alone (csrc/README.md, "The CPU backend"), and row g of a grouped problem has
// the bits of the problem with groups = 1 on that row alone.
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum NolaCpuIsa { NOLA_CPU_ISA_BEST = 0, NOLA_CPU_ISA_GENERIC = 1, NOLA_CPU_ISA_AVX2 = 2 };

// The distributions of docs/spec.md: v1's, then v1.1's (Philox4x32-7).
enum NolaCpuDistribution {
  NOLA_CPU_UNIFORM = 0,
  NOLA_CPU_RADEMACHER = 1,
  NOLA_CPU_UNIFORM16_PHILOX7 = 2,
  NOLA_CPU_RADEMACHER_PHILOX7 = 3,
};

enum NolaCpuStatus {
  NOLA_CPU_OK = 0,
  NOLA_CPU_BAD_DISTRIBUTION = 1,
  NOLA_CPU_BAD_SHAPE = 2,  // k > 2^32 or positions past 2^34
  NOLA_CPU_ISA_UNSUPPORTED = 3,
  NOLA_CPU_OUT_OF_MEMORY = 4,
};

// One basis family over one matrix: basis matrices [0, k) (or [index_start, index_start + k) for
// nola_cpu_basis) at flat positions [0, numel) (or [position_start, position_start + numel)), for
// `groups` rows of coefficients and matrices at once (G; 1 for the plain mix and project).
typedef struct NolaCpuProblem {
  uint64_t seed;
  uint64_t stream;
  uint64_t k;
  uint64_t numel;
  uint64_t groups;          // mix and project: rows g < groups, each entry generated once for all
  uint64_t index_start;     // nola_cpu_basis only
  uint64_t position_start;  // nola_cpu_basis only
  double scale;
  int32_t distribution;  // NolaCpuDistribution
  int32_t threads;       // OpenMP threads to use at most
  int32_t isa;           // NolaCpuIsa: which Philox code generates the entries
} NolaCpuProblem;

// 1 if this machine runs `isa`, else 0.
int nola_cpu_isa_supported(int32_t isa);

// out[g numel + n] = scale * sum_{i<k} coeffs[g k + i] U_i[n] for n < numel, g < groups.
int nola_cpu_mix_f32(const NolaCpuProblem* problem, const float* coeffs, float* out);
int nola_cpu_mix_f64(const NolaCpuProblem* problem, const double* coeffs, double* out);

// out[g k + i] = scale * sum_{n<numel} grad[g numel + n] U_i[n] for i < k, g < groups. `partials`
// holds nola_cpu_project_partials(problem) values: the per-chunk sums, added in chunk order.
uint64_t nola_cpu_project_partials(const NolaCpuProblem* problem);
int nola_cpu_project_f32(const NolaCpuProblem* problem, const float* grad, float* partials, float* out);
int nola_cpu_project_f64(const NolaCpuProblem* problem, const double* grad, double* partials, double* out);

// out[i * numel + n] = U_{index_start + i}[position_start + n]: the entries as the kernels
// generate them, for tests against the reference generator.
int nola_cpu_basis(const NolaCpuProblem* problem, float* out);

#ifdef __cplusplus
}
#endif
