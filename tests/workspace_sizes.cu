// Prints the workspace the kernels plan for the problems read from stdin, one per line:
//   lowrank tokens in out rank k l distribution(a nola::Distribution code) sm_count
//   generate distribution numel k mixes(0/1) projects(0/1) sm_count
// The planning is host code, so tests/test_cuda_host.py runs it for edge shapes without a GPU.
#include <cstdio>
#include <cstring>

#include "nola_cuda.h"

int main() {
  char kind[16];
  while (std::scanf("%15s", kind) == 1) {
    if (std::strcmp(kind, "lowrank") == 0) {
      long long tokens, in, out, k, l;
      int rank, distribution, sm_count;
      if (std::scanf("%lld %lld %lld %d %lld %lld %d %d", &tokens, &in, &out, &rank, &k, &l, &distribution,
                     &sm_count) != 8) {
        return 1;
      }
      nola::LowRankProblem problem{};
      problem.tokens = tokens;
      problem.in_features = in;
      problem.out_features = out;
      problem.rank = rank;
      problem.k = k;
      problem.l = l;
      problem.distribution = static_cast<nola::Distribution>(distribution);
      std::printf("%zu\n", nola::lowrank_workspace_bytes(problem, sm_count));
    } else if (std::strcmp(kind, "generate") == 0) {
      long long numel, k;
      int distribution, mixes, projects, sm_count;
      if (std::scanf("%d %lld %lld %d %d %d", &distribution, &numel, &k, &mixes, &projects, &sm_count) != 6) {
        return 1;
      }
      std::printf("%zu\n", nola::generate_workspace_bytes(static_cast<nola::Distribution>(distribution), numel, k,
                                                          mixes != 0, projects != 0, sm_count));
    } else {
      return 1;
    }
  }
  return 0;
}
