// mix and project over a basis family on the CPU, behind the C interface of nola_cpu.h.
//
// Work is cut into items by the problem's shape alone, and every sum runs in a fixed order inside
// its item, so results are the same bits for any thread count and either generator:
// - mix: items are tiles of positions; each tile's sums run over i = 0..k-1 in order, as
//   sum = sum + (coeffs[i] * scale) * U_i[n], from 0.
// - project: items are (chunk of positions, block of basis indices); for each index a chunk
//   accumulates into 64 lanes (lane = position mod 64, positions in increasing order), the lanes
//   fold pairwise (lane l += lane l + w for w = 32, 16, ..., 1) into the chunk's partial, and
//   out[i] = scale * (partial_0 + partial_1 + ...) in chunk order.
// A problem of G groups runs the same items: each entry generated once serves the G rows in turn,
// and every row's sums run in the order above, so row g has the bits of its own problem.
// Multiplies and adds stay separate (the build passes -ffp-contract=off), so no target fuses them
// differently.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <new>

#include "nola_cpu.h"
#include "philox_batch.h"

namespace nola::cpu {
namespace {

constexpr uint64_t kMaxIndices = uint64_t{1} << 32;   // basis index: counter word 1
constexpr uint64_t kMaxPositions = uint64_t{1} << 34;  // flat position: counter word 0 after the shift
// Entries generated at a time: a mix tile, and the step of a projection chunk (whole step calls
// for every distribution). Its values and sums stay in L1.
constexpr uint64_t kUniformTile = 512;
constexpr uint64_t kRademacherTile = 2048;
constexpr int kLanes = 64;
constexpr uint64_t kIndexBlock = 16;  // basis indices per projection item
// Projection items to aim for (enough to balance a few cores), and the fewest tiles a chunk holds.
constexpr uint64_t kTargetItems = 64;
constexpr uint64_t kMinChunkTiles = 2;
// Below this many generated entries a call runs on one thread: waking the team costs more.
constexpr uint64_t kMinParallelEntries = uint64_t{1} << 16;

uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

// A distribution of the contract (docs/spec.md): what the words of a Philox call become, and
// Philox's rounds. A tile is whole steps of calls, and a step whole lanes of projection sums.
template <Entries E, int Rounds>
struct Scheme {
  static constexpr int kShift = counter_shift(E);
  static constexpr uint64_t kTile = E == Entries::kSigns ? kRademacherTile : kUniformTile;
  static_assert(kTile % (uint64_t{kStepCalls} << kShift) == 0 && (uint64_t{kStepCalls} << kShift) % kLanes == 0);

  // Entries of the whole steps of calls that cover positions [first, first + count), first a
  // multiple of a call: count rounded up to a step, at most a tile.
  template <class Batch>
  static void generate(const Family& family, uint64_t first, uint64_t count, uint64_t index, float* out) {
    const auto call = static_cast<uint32_t>(first >> kShift);
    const auto calls = static_cast<uint32_t>(ceil_div(ceil_div(count, uint64_t{1} << kShift), kStepCalls) * kStepCalls);
    Batch::template generate<E, Rounds>(family, call, calls, static_cast<uint32_t>(index), out);
  }
};

using Uniform = Scheme<Entries::kUniform24, kDefaultRounds>;
using Rademacher = Scheme<Entries::kSigns, kDefaultRounds>;
using Uniform16Philox7 = Scheme<Entries::kUniform16, 7>;
using RademacherPhilox7 = Scheme<Entries::kSigns, 7>;

// Calls fn(Scheme{}) for a NolaCpuDistribution; false for any other code.
template <class Fn>
bool with_scheme(int32_t distribution, const Fn& fn) {
  switch (distribution) {
    case NOLA_CPU_UNIFORM: fn(Uniform{}); return true;
    case NOLA_CPU_RADEMACHER: fn(Rademacher{}); return true;
    case NOLA_CPU_UNIFORM16_PHILOX7: fn(Uniform16Philox7{}); return true;
    case NOLA_CPU_RADEMACHER_PHILOX7: fn(RademacherPhilox7{}); return true;
    default: return false;
  }
}

// Runs fn(item) for item < items on up to `threads` OpenMP threads, in any order.
template <class Fn>
void for_each_item(uint64_t items, int threads, uint64_t entries, const Fn& fn) {
  const uint64_t team = std::min<uint64_t>(std::max(threads, 1), items);
  if (team <= 1 || entries < kMinParallelEntries) {
    for (uint64_t item = 0; item < items; ++item) fn(item);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(static_cast<int>(team))
  for (int64_t item = 0; item < static_cast<int64_t>(items); ++item) fn(static_cast<uint64_t>(item));
}

// The multiply-adds that every generated entry feeds, once per row: cloned for AVX2 (8 lanes) and
// the baseline, the clone picked at load time. Each product and sum is one IEEE operation per
// element in either clone (no contraction), so both give the same bits.
#ifdef NOLA_CPU_HAVE_AVX2
#define NOLA_CPU_AVX2_CLONES [[gnu::target_clones("avx2", "default")]]
#else
#define NOLA_CPU_AVX2_CLONES
#endif

// Basis indices a mix tile generates before it adds them to the rows: each row's sums are then
// loaded and stored once per run instead of once per index.
constexpr uint64_t kMixRun = 4;

// sums[e] = (sums[e] + weights[0] * values[0][e]) + weights[1] * values[1][e] + ... for e < count,
// Run indices in order (values[r] at values + r * stride): the order of the single-index sums.
template <int Run, class Acc>
NOLA_CPU_AVX2_CLONES void add_weighted(Acc* __restrict__ sums, const float* __restrict__ values, uint64_t stride,
                                       const Acc* __restrict__ weights, uint64_t count) {
  for (uint64_t e = 0; e < count; ++e) {
    Acc sum = sums[e];
    for (int r = 0; r < Run; ++r) sum = sum + weights[r] * static_cast<Acc>(values[r * stride + e]);
    sums[e] = sum;
  }
}

template <class S, class Batch, class Acc>
void mix(const NolaCpuProblem& p, const Acc* coeffs, Acc* out) {
  const Family family = Family::of(p.seed, p.stream);
  const Acc scale = static_cast<Acc>(p.scale);
  for_each_item(ceil_div(p.numel, S::kTile), p.threads, p.k * p.numel, [&](uint64_t tile) {
    const uint64_t first = tile * S::kTile, count = std::min(S::kTile, p.numel - first);
    for (uint64_t g = 0; g < p.groups; ++g) std::fill_n(out + g * p.numel + first, count, Acc{0});
    alignas(64) float values[kMixRun * S::kTile];
    for (uint64_t i0 = 0; i0 < p.k; i0 += kMixRun) {
      const uint64_t run = std::min(kMixRun, p.k - i0);
      for (uint64_t r = 0; r < run; ++r) S::template generate<Batch>(family, first, count, i0 + r, values + r * S::kTile);
      for (uint64_t g = 0; g < p.groups; ++g) {
        Acc weights[kMixRun];
        for (uint64_t r = 0; r < run; ++r) weights[r] = coeffs[g * p.k + i0 + r] * scale;
        Acc* sums = out + g * p.numel + first;
        if (run == kMixRun) {
          add_weighted<kMixRun>(sums, values, S::kTile, weights, count);
        } else {
          for (uint64_t r = 0; r < run; ++r) add_weighted<1>(sums, values + r * S::kTile, S::kTile, weights + r, count);
        }
      }
    }
  });
}

// How a projection splits: chunks of whole tiles, times blocks of kIndexBlock basis indices.
struct ProjectPlan {
  uint64_t chunk_entries, chunks, index_blocks;

  static ProjectPlan of(const NolaCpuProblem& p, uint64_t tile) {
    const uint64_t tiles = std::max<uint64_t>(ceil_div(p.numel, tile), 1);
    const uint64_t index_blocks = ceil_div(p.k, kIndexBlock);
    const uint64_t wanted = std::max<uint64_t>(ceil_div(kTargetItems, std::max<uint64_t>(index_blocks, 1)), 1);
    const uint64_t chunk_tiles = ceil_div(tiles, std::min(wanted, std::max<uint64_t>(tiles / kMinChunkTiles, 1)));
    return ProjectPlan{chunk_tiles * tile, ceil_div(tiles, chunk_tiles), index_blocks};
  }
};

template <class Acc>
Acc fold_lanes(Acc* lanes) {
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int l = 0; l < width; ++l) lanes[l] = lanes[l] + lanes[l + width];
  }
  return lanes[0];
}

// grad at positions [start, start + count) as whole lanes: in place, or copied into `padded` and
// followed by zeros (the entries generated past the last position meet zeros).
template <class Acc>
const Acc* whole_lanes(const Acc* grad, uint64_t start, uint64_t count, Acc* padded) {
  const uint64_t whole = ceil_div(count, kLanes) * kLanes;
  if (count == whole) return grad + start;
  std::fill(std::copy(grad + start, grad + start + count, padded), padded + whole, Acc{0});
  return padded;
}

// lanes[l] += g[e] U[e] for the positions e = l mod 64 of [0, whole), in order.
template <class Acc>
NOLA_CPU_AVX2_CLONES void accumulate_lanes(Acc* __restrict__ lanes, const Acc* __restrict__ g,
                                           const float* __restrict__ values, uint64_t whole) {
  for (uint64_t e = 0; e < whole; e += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] = lanes[l] + g[e + l] * static_cast<Acc>(values[e + l]);
  }
}

// out[i] = scale * (partials[0 k + i] + partials[1 k + i] + ...), chunks in order.
template <class Acc>
void sum_partials(const Acc* partials, uint64_t chunks, uint64_t k, Acc scale, Acc* out) {
  for (uint64_t i = 0; i < k; ++i) {
    Acc sum = partials[i];
    for (uint64_t chunk = 1; chunk < chunks; ++chunk) sum = sum + partials[chunk * k + i];
    out[i] = sum * scale;
  }
}

// Partials are laid out (group, chunk, index); the plan does not depend on the groups, so row g's
// sums are those of the problem of that row alone. Returns false when a work item's lanes (kLanes
// per group) could not be allocated.
template <class S, class Batch, class Acc>
bool project(const NolaCpuProblem& p, const Acc* grad, Acc* partials, Acc* out) {
  const Family family = Family::of(p.seed, p.stream);
  const ProjectPlan plan = ProjectPlan::of(p, S::kTile);
  const uint64_t group_partials = plan.chunks * p.k;
  std::atomic<bool> allocated{true};
  for_each_item(plan.chunks * plan.index_blocks, p.threads, p.k * p.numel, [&](uint64_t item) {
    std::unique_ptr<Acc[]> lanes(new (std::nothrow) Acc[p.groups * kLanes]);
    if (!lanes) {
      allocated = false;
      return;
    }
    const uint64_t chunk = item / plan.index_blocks, block = item % plan.index_blocks;
    const uint64_t first = chunk * plan.chunk_entries;
    const uint64_t stop = std::min(first + plan.chunk_entries, p.numel);
    alignas(64) float values[S::kTile];
    alignas(64) Acc padded[S::kTile];
    for (uint64_t i = block * kIndexBlock; i < std::min(p.k, (block + 1) * kIndexBlock); ++i) {
      std::fill_n(lanes.get(), p.groups * kLanes, Acc{0});
      for (uint64_t start = first; start < stop; start += S::kTile) {
        const uint64_t count = std::min(S::kTile, stop - start), whole = ceil_div(count, kLanes) * kLanes;
        S::template generate<Batch>(family, start, count, i, values);
        for (uint64_t g = 0; g < p.groups; ++g) {
          accumulate_lanes(&lanes[g * kLanes], whole_lanes(grad + g * p.numel, start, count, padded), values, whole);
        }
      }
      for (uint64_t g = 0; g < p.groups; ++g) {
        partials[g * group_partials + chunk * p.k + i] = fold_lanes(&lanes[g * kLanes]);
      }
    }
  });
  if (!allocated) return false;
  for (uint64_t g = 0; g < p.groups; ++g) {
    sum_partials(partials + g * group_partials, plan.chunks, p.k, static_cast<Acc>(p.scale), out + g * p.k);
  }
  return true;
}

template <class S, class Batch>
void basis(const NolaCpuProblem& p, float* out) {
  const Family family = Family::of(p.seed, p.stream);
  const uint64_t stop = p.position_start + p.numel;
  for_each_item(p.k, p.threads, p.k * p.numel, [&](uint64_t i) {
    alignas(64) float values[S::kTile];
    // Tiles start at whole calls; the first and last may stick out of the positions asked for.
    for (uint64_t tile = p.position_start >> S::kShift << S::kShift; tile < stop; tile += S::kTile) {
      const uint64_t low = std::max(tile, p.position_start), high = std::min(tile + S::kTile, stop);
      S::template generate<Batch>(family, tile, high - tile, p.index_start + i, values);
      std::copy(values + (low - tile), values + (high - tile), out + i * p.numel + (low - p.position_start));
    }
  });
}

bool runs(int32_t isa) {
#ifdef NOLA_CPU_HAVE_AVX2
  if (isa == NOLA_CPU_ISA_AVX2) return __builtin_cpu_supports("avx2");
#endif
  return isa == NOLA_CPU_ISA_GENERIC || isa == NOLA_CPU_ISA_BEST;
}

int checked(const NolaCpuProblem& p) {
  if (p.k > kMaxIndices || p.index_start > kMaxIndices - p.k || p.numel > kMaxPositions ||
      p.position_start > kMaxPositions - p.numel) {
    return NOLA_CPU_BAD_SHAPE;
  }
  return runs(p.isa) ? NOLA_CPU_OK : NOLA_CPU_ISA_UNSUPPORTED;
}

// Calls fn(Scheme{}, Batch{}) for the problem's distribution and generator.
template <class Fn>
int dispatch(const NolaCpuProblem& p, const Fn& fn) {
  const auto with_batch = [&](auto batch) { with_scheme(p.distribution, [&](auto scheme) { fn(scheme, batch); }); };
  if (!with_scheme(p.distribution, [](auto) {})) return NOLA_CPU_BAD_DISTRIBUTION;
  if (const int status = checked(p); status != NOLA_CPU_OK) return status;
#ifdef NOLA_CPU_HAVE_AVX2
  if (p.isa == NOLA_CPU_ISA_AVX2 || (p.isa == NOLA_CPU_ISA_BEST && runs(NOLA_CPU_ISA_AVX2))) {
    with_batch(Avx2Batch{});
    return NOLA_CPU_OK;
  }
#endif
  with_batch(PortableBatch{});
  return NOLA_CPU_OK;
}

template <class Acc>
int mix_entry(const NolaCpuProblem* p, const Acc* coeffs, Acc* out) {
  return dispatch(*p, [&](auto scheme, auto batch) { mix<decltype(scheme), decltype(batch)>(*p, coeffs, out); });
}

// Partials of a projection: 0 for an unknown distribution, which the kernel then refuses.
uint64_t project_partials(const NolaCpuProblem& p) {
  uint64_t chunks = 0;
  with_scheme(p.distribution, [&](auto scheme) { chunks = ProjectPlan::of(p, decltype(scheme)::kTile).chunks; });
  return p.groups * chunks * p.k;
}

template <class Acc>
int project_entry(const NolaCpuProblem* p, const Acc* grad, Acc* partials, Acc* out) {
  bool allocated = true;
  const int status = dispatch(*p, [&](auto scheme, auto batch) {
    allocated = project<decltype(scheme), decltype(batch)>(*p, grad, partials, out);
  });
  return status == NOLA_CPU_OK && !allocated ? NOLA_CPU_OUT_OF_MEMORY : status;
}

}  // namespace
}  // namespace nola::cpu

extern "C" {

int nola_cpu_isa_supported(int32_t isa) { return nola::cpu::runs(isa) ? 1 : 0; }

int nola_cpu_mix_f32(const NolaCpuProblem* p, const float* coeffs, float* out) {
  return nola::cpu::mix_entry(p, coeffs, out);
}

int nola_cpu_mix_f64(const NolaCpuProblem* p, const double* coeffs, double* out) {
  return nola::cpu::mix_entry(p, coeffs, out);
}

uint64_t nola_cpu_project_partials(const NolaCpuProblem* p) {
  return nola::cpu::project_partials(*p);
}

int nola_cpu_project_f32(const NolaCpuProblem* p, const float* grad, float* partials, float* out) {
  return nola::cpu::project_entry(p, grad, partials, out);
}

int nola_cpu_project_f64(const NolaCpuProblem* p, const double* grad, double* partials, double* out) {
  return nola::cpu::project_entry(p, grad, partials, out);
}

int nola_cpu_basis(const NolaCpuProblem* p, float* out) {
  return nola::cpu::dispatch(*p, [&](auto scheme, auto batch) {
    nola::cpu::basis<decltype(scheme), decltype(batch)>(*p, out);
  });
}
}
