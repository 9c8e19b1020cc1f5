// bench/svd_real: the rank-r truncated SVDs of a real model's 210 adapted weights (SmolLM2-135M: 30
// layers x q, k, v, o, gate, up, down), exact (Eigen BDCSVD in double) against block Krylov, both
// through svd_truncated_batch on all threads: wall seconds, and the worst disagreement of Krylov with
// exact per module kind (relative singular values; |u_i - u_i'|, |v_i - v_i'| entry-wise, after the
// shared sign convention), with the smallest relative gap sigma_r / sigma_{r+1} - 1 seen.
// Usage: svd_real MODEL.gguf [r=2] [--skip-exact] [--tolerance=1e-9] [--block-extra=0]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "tinylora/backend/cpu/cpu.hpp"
#include "tinylora/linalg/svd.hpp"
#include "tinylora/model/adapted.hpp"
#include "tinylora/precision/policies.hpp"

using namespace tinylora;
using Clock = std::chrono::steady_clock;

namespace {
template <class F>
double seconds_of(F&& f) {
  auto const t0 = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Worst {
  double s = 0, u = 0, v = 0;
};
}  // namespace

int main(int argc, char** argv) try {
  if (argc < 2) {
    std::fprintf(stderr, "usage: svd_real MODEL.gguf [r=2] [--skip-exact]\n");
    return 2;
  }
  Index r = 2;
  bool skip_exact = false;
  linalg::KrylovSvdOptions krylov_options;
  for (int i = 2; i < argc; ++i) {
    std::string const a = argv[i];
    if (a == "--skip-exact") skip_exact = true;
    else if (a.rfind("--tolerance=", 0) == 0) krylov_options.tolerance = std::atof(a.c_str() + 12);
    else if (a.rfind("--block-extra=", 0) == 0) krylov_options.block_extra = std::atoi(a.c_str() + 14);
    else r = std::atoi(a.c_str());
  }

  auto const net = model::Decoder<backend::Cpu, precision::Fp32>::load(argv[1]);
  auto const modules = model::target_modules(net.config(), {});
  auto const& types = default_target_types();
  std::vector<HostMatrix> weights;
  for (auto const& m : modules) {
    auto const p = static_cast<model::Proj>(std::find(types.begin(), types.end(), m.type) - types.begin());
    weights.push_back(net.weight_matrix(m.layer, p));
  }
  std::vector<ConstMatrixView<float>> views;
  for (auto const& w : weights) views.push_back(view_of(w));
  std::printf("%zu matrices, r = %td\n", views.size(), r);

  std::vector<linalg::TruncatedSvd> krylov, exact;
  krylov.resize(views.size());
  double const t_krylov = seconds_of([&] {
#pragma omp parallel for schedule(dynamic, 1)
    for (std::size_t m = 0; m < views.size(); ++m) krylov[m] = linalg::svd_krylov(views[m], r, krylov_options);
  });
  std::printf("krylov (tolerance %.1e, block r + %td): %.3f s\n", krylov_options.tolerance, krylov_options.block_extra,
              t_krylov);
  if (skip_exact) return 0;
  double const t_exact = seconds_of([&] { exact = linalg::svd_truncated_batch(views, r, linalg::SvdMethod::Exact); });
  std::printf("exact:  %.3f s (%.1fx krylov's time)\n", t_exact, t_exact / t_krylov);

  std::map<std::string, Worst> worst;
  for (std::size_t m = 0; m < views.size(); ++m) {
    Worst& w = worst[modules[m].type];
    for (Index i = 0; i < r; ++i) {
      w.s = std::max(w.s, std::abs(double{krylov[m].S(i)} / double{exact[m].S(i)} - 1.0));
      w.u = std::max(w.u, double{(krylov[m].U.col(i) - exact[m].U.col(i)).cwiseAbs().maxCoeff()});
      w.v = std::max(w.v, double{(krylov[m].V.col(i) - exact[m].V.col(i)).cwiseAbs().maxCoeff()});
    }
  }
  std::printf("| kind | max rel. error of S | max |dU| | max |dV| |\n|---|---|---|---|\n");
  for (auto const& [type, w] : worst) std::printf("| %s | %.2e | %.2e | %.2e |\n", type.c_str(), w.s, w.u, w.v);
  double min_gap = 1e300;
  for (std::size_t m = 0; m < views.size(); ++m)
    for (Index i = 0; i + 1 < r; ++i) min_gap = std::min(min_gap, double{exact[m].S(i)} / double{exact[m].S(i + 1)} - 1.0);
  std::printf("smallest gap sigma_i / sigma_{i+1} - 1 among the top %td: %.2e\n", r, min_gap);
  return 0;
} catch (std::exception const& e) {
  std::fprintf(stderr, "svd_real: %s\n", e.what());
  return 1;
}
