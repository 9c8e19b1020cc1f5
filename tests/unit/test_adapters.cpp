// Adapter maths: finite-difference gradients for every adapter x tie strategy x precision; v = 0 is
// the base layer exactly; merged forward = fused forward; tied gradient = sum of untied gradients;
// each TinyLoRA convention's Delta W against its formula computed independently in double.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "../adapter_matrix.hpp"
#include "../support.hpp"
#include "tinylora/adapters/adapters.hpp"
#include "tinylora/backend/cpu/cpu.hpp"
#include "tinylora/core/type_list.hpp"
#include "tinylora/precision/policies.hpp"
#include "tinylora/tying/strategies.hpp"

using namespace tinylora;
using adapters::AdapterSet;
using backend::Cpu;

namespace {

/// Two blocks of four module types with small, distinct shapes.
ModuleList small_modules() {
  ModuleList m;
  for (int l = 0; l < 2; ++l) {
    std::string const p = "model.layers." + std::to_string(l) + ".";
    m.push_back({p + "q_proj", l, "q_proj", 6, 8});
    m.push_back({p + "k_proj", l, "k_proj", 4, 8});
    m.push_back({p + "up_proj", l, "up_proj", 10, 8});
    m.push_back({p + "down_proj", l, "down_proj", 8, 10});
  }
  return m;
}

HostMatrix random_matrix(Index rows, Index cols, std::uint64_t seed, std::uint64_t stream, float scale = 1.0f) {
  auto const v = test::normal_vector(static_cast<std::size_t>(rows * cols), seed, stream, scale);
  return Eigen::Map<HostMatrix const>(v.data(), rows, cols);
}

/// Values on the grid k / 128, |k| <= 32: exact in bf16 and fp16, and so are value +- 0.25.
std::vector<float> grid_theta(Index n, std::uint64_t seed) {
  CounterRng rng(seed, streams::of(streams::kTest, 99));
  std::vector<float> t(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < t.size(); ++i)
    t[i] = static_cast<float>(static_cast<int>(rng.bits64(i) % 65) - 32) / 128.0f;
  return t;
}

/// L = sum_i 1/2 || X_i W_i^T + X_i Delta W_i^T - T_i ||^2 over the modules of an AdapterSet.
template <class A, class T, class P>
struct Problem {
  ModuleList modules = small_modules();
  std::vector<HostMatrix> W, X, Target;
  std::vector<ConstMatrixView<float>> views;
  AdapterSet<A, T, P, Cpu> set;
  static constexpr Index kTokens = 5;

  Problem(A adapter, T strategy, std::uint64_t seed) : set(make(adapter, strategy, seed)) {}

  AdapterSet<A, T, P, Cpu> make(A adapter, T strategy, std::uint64_t seed) {
    for (std::size_t i = 0; i < modules.size(); ++i) {
      auto const& m = modules[i];
      W.push_back(random_matrix(m.d_out, m.d_in, seed, 3 * i, 0.5f));
      // Frozen weights live in P::weight_type: round them so the dense reference sees the same numbers.
      for (Index j = 0; j < W.back().size(); ++j) W.back().data()[j] = P::round_weight(W.back().data()[j]);
      X.push_back(random_matrix(kTokens, m.d_in, seed, 3 * i + 1));
      Target.push_back(random_matrix(kTokens, m.d_out, seed, 3 * i + 2));
    }
    for (auto const& w : W) views.push_back(view_of(w));
    return AdapterSet<A, T, P, Cpu>(adapter, strategy, modules, views);
  }

  HostMatrix forward(std::size_t i) const {
    HostMatrix Y = X[i] * W[i].transpose();
    set.module(static_cast<Index>(i)).apply(view_of(X[i]), view_of(Y));
    return Y;
  }

  double loss(std::vector<float> const& theta) {
    set.set_theta(theta);
    double L = 0;
    for (std::size_t i = 0; i < modules.size(); ++i) {
      HostMatrix const R = forward(i) - Target[i];
      for (Index j = 0; j < R.size(); ++j) L += 0.5 * double{R.data()[j]} * R.data()[j];
    }
    return L;
  }

  std::vector<float> gradient(std::vector<float> const& theta) {
    set.set_theta(theta);
    set.zero_grad();
    for (std::size_t i = 0; i < modules.size(); ++i) {
      HostMatrix const dY = forward(i) - Target[i];
      set.module(static_cast<Index>(i)).backward(view_of(X[i]), view_of(dY), MatrixView<float>{});
    }
    return set.gradient();
  }
};

template <class P>
constexpr double fd_tolerance() {
  return std::is_same_v<P, precision::Fp32> ? 1e-4 : 1e-3;
}


using test::AllAdapters;
using test::AllTies;
using test::make_adapter;
using test::make_tie;
using test::relative_error;
using AllPrecisions = TypeList<precision::Fp32, precision::Bf16, precision::Fp16>;

}  // namespace

TEST_CASE("finite-difference gradient of theta: every adapter x tie strategy x precision") {
  auto const seed = test::seed(20260211);
  int checked = 0;
  for_each_type(AllPrecisions{}, [&]<class P>() {
    for_each_pair(AllAdapters{}, AllTies{}, [&]<class A, class T>() {
      if constexpr (!(A::slots_depend_on_shape && T::mixes_module_types)) {
        INFO("adapter " << A::name << ", tie " << T::name << ", precision " << P::name);
        Problem<A, T, P> p(make_adapter<A>(seed), make_tie<T>(), seed);
        auto const theta = grid_theta(p.set.count(), seed);
        auto const g = p.gradient(theta);
        // Every slot enters Delta W linearly, so L is quadratic along each coordinate and the
        // central difference is exact up to rounding; eps = 0.25 keeps theta +- eps on the k/128 grid.
        float const eps = 0.25f;
        std::vector<double> fd(theta.size());
        for (std::size_t j = 0; j < theta.size(); ++j) {
          auto plus = theta, minus = theta;
          plus[j] += eps;
          minus[j] -= eps;
          fd[j] = (p.loss(plus) - p.loss(minus)) / (2.0 * eps);
        }
        double const err = relative_error(g, fd);
        INFO("relative error " << err << " over " << theta.size() << " slots");
        CHECK(err <= fd_tolerance<P>());
        ++checked;
      }
    });
  });
  // 7 adapters x 5 ties minus 2 shape-dependent adapters x 3 mixing ties = 29 per precision.
  CHECK(checked == 3 * 29);
}

TEST_CASE("finite-difference gradient of the input X through every adapter (fp32)") {
  auto const seed = test::seed(7);
  for_each_type(AllAdapters{}, [&]<class A>() {
    INFO("adapter " << A::name);
    Problem<A, tying::Untied, precision::Fp32> p(make_adapter<A>(seed), {}, seed);
    p.set.set_theta(grid_theta(p.set.count(), seed));
    std::size_t const i = 3;  // down_proj of layer 0: (8, 10)
    auto& module = p.set.module(static_cast<Index>(i));
    HostMatrix const dY = random_matrix(p.X[i].rows(), p.modules[i].d_out, seed, 500);
    HostMatrix dX = HostMatrix::Zero(p.X[i].rows(), p.X[i].cols());
    module.backward(view_of(p.X[i]), view_of(dY), view_of(dX));
    // L(X) = <dY, X Delta W^T> is linear in X: the central difference is exact up to rounding.
    auto L = [&](HostMatrix const& X) {
      HostMatrix Y = HostMatrix::Zero(X.rows(), p.modules[i].d_out);
      module.apply(view_of(X), view_of(Y));
      return double(Y.cwiseProduct(dY).sum());
    };
    std::vector<float> g(dX.data(), dX.data() + dX.size());
    std::vector<double> fd(g.size());
    for (Index j = 0; j < dX.size(); ++j) {
      HostMatrix plus = p.X[i], minus = p.X[i];
      plus.data()[j] += 0.5f;
      minus.data()[j] -= 0.5f;
      fd[static_cast<std::size_t>(j)] = (L(plus) - L(minus)) / 1.0;
    }
    CHECK(relative_error(g, fd) <= 1e-5);
  });
}

TEST_CASE("zero slots give the base layer exactly, bit for bit") {
  auto const seed = test::seed(11);
  for_each_type(AllAdapters{}, [&]<class A>() {
    INFO("adapter " << A::name);
    Problem<A, tying::Untied, precision::Fp32> p(make_adapter<A>(seed), {}, seed);
    p.set.set_theta(std::vector<float>(static_cast<std::size_t>(p.set.count()), 0.0f));
    for (std::size_t i = 0; i < p.modules.size(); ++i) {
      HostMatrix const base = p.X[i] * p.W[i].transpose();
      HostMatrix const Y = p.forward(i);
      CHECK(std::memcmp(base.data(), Y.data(), sizeof(float) * static_cast<std::size_t>(Y.size())) == 0);
    }
  });
}

TEST_CASE("merged forward equals fused forward; unmerge restores W") {
  auto const seed = test::seed(12);
  for_each_type(AllAdapters{}, [&]<class A>() {
    INFO("adapter " << A::name);
    Problem<A, tying::Untied, precision::Fp32> p(make_adapter<A>(seed), {}, seed);
    p.set.set_theta(grid_theta(p.set.count(), seed));
    for (std::size_t i = 0; i < p.modules.size(); ++i) {
      HostMatrix const fused = p.forward(i);
      HostMatrix W = p.W[i];
      p.set.module(static_cast<Index>(i)).merge(view_of(W));
      HostMatrix const merged = p.X[i] * W.transpose();
      std::vector<float> a(fused.data(), fused.data() + fused.size()), b(merged.data(), merged.data() + merged.size());
      TINYLORA_CHECK_CLOSE(a, b, 1e-5, 1e-5);
      p.set.module(static_cast<Index>(i)).unmerge(view_of(W));
      std::vector<float> w0(p.W[i].data(), p.W[i].data() + p.W[i].size()), w1(W.data(), W.data() + W.size());
      TINYLORA_CHECK_CLOSE(w1, w0, 0.0, 1e-6);
    }
  });
}

TEST_CASE("merge into bf16 weights rounds to bf16 and stays close to the fused forward") {
  auto const seed = test::seed(13);
  using P = precision::Bf16;
  Problem<adapters::TinyLora<>, tying::Untied, P> p(make_adapter<adapters::TinyLora<>>(seed), {}, seed);
  p.set.set_theta(grid_theta(p.set.count(), seed));
  std::size_t const i = 0;
  std::vector<bf16> W16(static_cast<std::size_t>(p.W[i].size()));
  for (std::size_t j = 0; j < W16.size(); ++j) W16[j] = bf16(p.W[i].data()[j]);
  p.set.module(0).merge(MatrixView<bf16>{W16.data(), p.W[i].rows(), p.W[i].cols()});
  HostMatrix const dW = p.set.module(0).delta_w();
  for (std::size_t j = 0; j < W16.size(); ++j)
    CHECK(W16[j].bits == bf16(p.W[i].data()[j] + dW.data()[j]).bits);
}

TEST_CASE("a tied group's gradient is the sum of its modules' untied gradients") {
  auto const seed = test::seed(14);
  using A = adapters::TinyLora<adapters::Paper>;
  for_each_type<tying::Tiling, tying::Structured, tying::All, tying::PeftRatio>([&]<class T>() {
    INFO("tie " << T::name);
    Problem<A, T, precision::Fp32> tied(make_adapter<A>(seed), make_tie<T>(), seed);
    Problem<A, tying::Untied, precision::Fp32> untied(make_adapter<A>(seed), {}, seed);
    auto const theta = grid_theta(tied.set.count(), seed);
    Index const u = 2;
    std::vector<float> expanded(static_cast<std::size_t>(untied.set.count()));
    for (Index i = 0; i < untied.set.n_modules(); ++i)
      for (Index k = 0; k < u; ++k) expanded[i * u + k] = theta[tied.set.group_of(i) * u + k];
    auto const g_tied = tied.gradient(theta);
    auto const g_untied = untied.gradient(expanded);
    std::vector<float> summed(g_tied.size(), 0.0f);
    for (Index i = 0; i < untied.set.n_modules(); ++i)
      for (Index k = 0; k < u; ++k) summed[tied.set.group_of(i) * u + k] += g_untied[i * u + k];
    TINYLORA_CHECK_CLOSE(g_tied, summed, 1e-5, 1e-6);
    CHECK(tied.set.n_groups() < untied.set.n_groups());
  });
}

namespace {
/// Delta W from the convention's formula (REFERENCE.md section 2), in double, from the module's own
/// SVD factors, P and v.
template <class C>
Eigen::MatrixXd formula_delta_w(linalg::TruncatedSvd const& f, xt::xtensor<float, 3> const& P,
                                std::vector<float> const& v, float alpha) {
  Index const r = f.S.size(), u = static_cast<Index>(v.size());
  Eigen::MatrixXd M = Eigen::MatrixXd::Zero(r, r);
  for (Index k = 0; k < u; ++k)
    for (Index a = 0; a < r; ++a)
      for (Index b = 0; b < r; ++b) M(a, b) += double{v[k]} * P(k, a, b);
  Eigen::MatrixXd const U = f.U.cast<double>(), V = f.V.cast<double>();
  Eigen::VectorXd const S = f.S.cast<double>();
  if constexpr (std::is_same_v<C, adapters::Paper>) return U * S.asDiagonal() * M * V.transpose();
  else if constexpr (std::is_same_v<C, adapters::Reference>)
    return (alpha / u) * U * S.asDiagonal() * M * V.transpose();
  else if constexpr (std::is_same_v<C, adapters::Peft>)
    return U * S.cwiseSqrt().asDiagonal() * M * S.cwiseSqrt().asDiagonal() * V.transpose();
  else return (alpha / r) * U * (M / std::sqrt(double(u))) * S.asDiagonal() * V.transpose();
}
}  // namespace

TEST_CASE("each TinyLoRA convention's Delta W matches its published formula") {
  auto const seed = test::seed(15);
  for_each_type<adapters::Paper, adapters::Reference, adapters::Peft, adapters::Fork>([&]<class C>() {
    INFO("convention " << C::name);
    adapters::TinyLora<C> kind;
    kind.u = 3;
    kind.seed = seed;
    HostMatrix const W = random_matrix(12, 9, seed, 1);
    typename adapters::TinyLora<C>::template Module<Cpu, precision::Fp32> m(kind, view_of(W), 5);
    std::vector<float> const v{0.5f, -0.25f, 0.125f};
    m.set_slots(v);
    Eigen::MatrixXd const want = formula_delta_w<C>(m.svd(), m.projection(), v, kind.alpha);
    HostMatrix const got = m.delta_w();
    CHECK((got.cast<double>() - want).norm() <= 1e-5 * want.norm());
    CHECK(want.norm() > 0);
  });
}

TEST_CASE("projections P: per-module, reproducible, with the convention's spread") {
  auto const seed = test::seed(16);
  adapters::TinyLora<adapters::Paper> paper;
  paper.u = 4096;
  paper.seed = seed;
  auto const P0 = paper.projections(0), P0b = paper.projections(0), P1 = paper.projections(1);
  CHECK(P0 == P0b);
  CHECK(P0 != P1);
  auto stddev = [](xt::xtensor<float, 3> const& P) {
    double s = 0;
    for (float x : P) s += double{x} * x;
    return std::sqrt(s / static_cast<double>(P.size()));
  };
  CHECK(stddev(P0) == doctest::Approx(1.0 / std::sqrt(2.0)).epsilon(0.02));  // N(0, 1/r), r = 2
  adapters::TinyLora<adapters::Fork> fork;
  fork.u = 4096;
  CHECK(stddev(fork.projections(0)) == doctest::Approx(1.0).epsilon(0.02));  // N(0, 1)
}

TEST_CASE("trainable counts and bytes per adapter kind") {
  ModuleInfo const q{"q", 0, "q_proj", 576, 576};
  CHECK(adapters::TinyLora<>{.r = 2, .u = 13}.slots(q) == 13);
  CHECK(adapters::LoraXs{.r = 2}.slots(q) == 4);
  CHECK(adapters::Lora{.r = 8}.slots(q) == 8 * (576 + 576));
  CHECK(adapters::Full{}.slots(q) == 576 * 576);
  auto const seed = test::seed(17);
  Problem<adapters::TinyLora<>, tying::Tiling, precision::Bf16> p(make_adapter<adapters::TinyLora<>>(seed),
                                                                   tying::Tiling{3}, seed);
  CHECK(p.set.n_groups() == 3);  // ceil(8 / 3)
  CHECK(p.set.count() == 6);     // 3 groups x u = 2
  CHECK(p.set.bytes() == 12);    // bf16
}

TEST_CASE("AdapterSet rejects mismatched weights with a clear message") {
  ModuleList modules{{"a", 0, "q_proj", 4, 3}};
  HostMatrix const W = HostMatrix::Zero(3, 4);
  std::vector<ConstMatrixView<float>> views{view_of(W)};
  using Set = AdapterSet<adapters::TinyLora<>, tying::Untied, precision::Fp32, Cpu>;
  CHECK_THROWS_WITH_AS(Set(adapters::TinyLora<>{}, tying::Untied{}, modules, views),
                       doctest::Contains("expects a (4, 3) weight, got (3, 4)"), Error);
}
