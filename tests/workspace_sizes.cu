// Prints the workspace the kernels plan for low-rank problems read from stdin, one per line:
//   tokens in out rank k l distribution(0 uniform, 1 rademacher) sm_count
// The planning is host code, so tests/test_cuda_host.py runs it for edge shapes without a GPU.
#include <cstdio>

#include "nola_cuda.h"

int main() {
  long long tokens, in, out;
  int rank, k, l, distribution, sm_count;
  while (std::scanf("%lld %lld %lld %d %d %d %d %d", &tokens, &in, &out, &rank, &k, &l, &distribution,
                    &sm_count) == 8) {
    nola::LowRankProblem problem{};
    problem.tokens = tokens;
    problem.in_features = in;
    problem.out_features = out;
    problem.rank = rank;
    problem.k = k;
    problem.l = l;
    problem.distribution = static_cast<nola::Distribution>(distribution);
    std::printf("%zu\n", nola::lowrank_workspace_bytes(problem, sm_count));
  }
  return 0;
}
