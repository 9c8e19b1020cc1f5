// The decoder's backward kernels against central finite differences of their forward kernels.
// For each kernel: a random scalar loss L = <G, forward(x)> (G random), differentiated numerically
// (central differences of the fp32 forward, the loss summed and differenced in double) and compared
// with the analytic gradient by the relative error |g - g^| / |g + g^| <= 1e-3 (fp32 tolerance).
// A composed 1-layer attention block checks that the pieces chain into the right input gradient.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "../support.hpp"
#include "tinylora/backend/cpu/kernels.hpp"
#include "tinylora/backend/cpu/kernels_backward.hpp"
#include "tinylora/precision/types.hpp"

using namespace tinylora;
namespace k = tinylora::backend::cpu;

namespace {

constexpr double kTolerance = 1e-3;  // relative error bound for fp32 forwards
constexpr float kStep = 1e-2f;       // finite-difference step (fp32 inputs of size ~1)

MatrixView<float> view(std::vector<float>& x, Index rows, Index cols) { return {x.data(), rows, cols}; }
ConstMatrixView<float> cview(std::vector<float> const& x, Index rows, Index cols) { return {x.data(), rows, cols}; }

/// <a, b> in double.
double dot(std::vector<float> const& a, std::vector<float> const& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += double{a[i]} * b[i];
  return s;
}

/// |g - h| / |g + h|.
double relative_error(std::vector<double> const& g, std::vector<double> const& h) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < g.size(); ++i) {
    num += (g[i] - h[i]) * (g[i] - h[i]);
    den += (g[i] + h[i]) * (g[i] + h[i]);
  }
  return std::sqrt(num) / std::sqrt(den);
}

std::vector<double> widen(std::vector<float> const& x) { return {x.begin(), x.end()}; }

/// Central differences dL/dx_i = (L(x + h e_i) - L(x - h e_i)) / (2h), with h the step actually
/// representable in fp32 at x_i. x is restored.
std::vector<double> numeric_gradient(std::vector<float>& x, std::function<double()> const& loss) {
  std::vector<double> g(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    float const x0 = x[i];
    x[i] = x0 + kStep;
    double const up = loss();
    double const h_up = double{x[i]} - x0;
    x[i] = x0 - kStep;
    double const down = loss();
    double const h_down = double{x0} - x[i];
    x[i] = x0;
    g[i] = (up - down) / (h_up + h_down);
  }
  return g;
}

/// Checks and reports one gradient.
void check_gradient(std::string const& what, std::vector<double> const& analytic, std::vector<double> const& numeric) {
  double const err = relative_error(analytic, numeric);
  MESSAGE(what << ": relative error " << err);
  CHECK(err <= kTolerance);
  CHECK(std::sqrt(std::inner_product(analytic.begin(), analytic.end(), analytic.begin(), 0.0)) > 1e-3);  // not vacuous
}

/// Y = X W^T in fp32 with double accumulation.   X: (n, d_in), W: (d_out, d_in), returns (n, d_out)
std::vector<float> linear(std::vector<float> const& X, std::vector<float> const& W, Index n, Index d_in, Index d_out) {
  std::vector<float> Y(static_cast<std::size_t>(n * d_out));
  for (Index t = 0; t < n; ++t)
    for (Index o = 0; o < d_out; ++o) {
      double acc = 0;
      for (Index i = 0; i < d_in; ++i)
        acc += double{X[static_cast<std::size_t>(t * d_in + i)]} * W[static_cast<std::size_t>(o * d_in + i)];
      Y[static_cast<std::size_t>(t * d_out + o)] = static_cast<float>(acc);
    }
  return Y;
}

/// dX += dY W.   dY: (n, d_out), W: (d_out, d_in), dX: (n, d_in)
void linear_backward(std::vector<float> const& dY, std::vector<float> const& W, Index n, Index d_in, Index d_out,
                     std::vector<float>& dX) {
  for (Index t = 0; t < n; ++t)
    for (Index i = 0; i < d_in; ++i) {
      double acc = 0;
      for (Index o = 0; o < d_out; ++o)
        acc += double{dY[static_cast<std::size_t>(t * d_out + o)]} * W[static_cast<std::size_t>(o * d_in + i)];
      dX[static_cast<std::size_t>(t * d_in + i)] += static_cast<float>(acc);
    }
}

// Three sequences of lengths 1, 2, 5 packed back to back.
std::vector<Index> const kOffsets{0, 1, 3, 8};
constexpr Index kTokens = 8;
constexpr int kHeads = 4, kKvHeads = 2;
constexpr Index kHeadDim = 4;

}  // namespace

TEST_CASE("rmsnorm_backward matches finite differences and accumulates into dx") {
  std::uint64_t const seed = test::seed(101);
  Index const n = 5, d = 8;
  // eps large enough to matter: row 1 is scaled to mean(x^2) ~ 0.09 against eps = 0.05.
  float const eps = 0.05f;
  auto x = test::normal_vector(static_cast<std::size_t>(n * d), seed, 0);
  for (Index j = 0; j < d; ++j) x[static_cast<std::size_t>(d + j)] *= 0.3f;
  auto const w = test::normal_vector(static_cast<std::size_t>(d), seed, 1);
  auto const G = test::normal_vector(static_cast<std::size_t>(n * d), seed, 2);
  std::vector<float> y(x.size()), rstd(static_cast<std::size_t>(n));
  auto const loss = [&] {
    k::rmsnorm_forward(cview(x, n, d), w.data(), eps, view(y, n, d));
    return dot(G, y);
  };
  auto const numeric = numeric_gradient(x, loss);
  k::rmsnorm_forward(cview(x, n, d), w.data(), eps, view(y, n, d), std::span<float>(rstd));
  auto const prior = test::normal_vector(x.size(), seed, 3);  // dx accumulates onto this
  std::vector<float> dx = prior;
  k::rmsnorm_backward(cview(x, n, d), w.data(), std::span<float const>(rstd), cview(G, n, d), view(dx, n, d));
  std::vector<double> analytic(dx.size());
  for (std::size_t i = 0; i < dx.size(); ++i) analytic[i] = double{dx[i]} - prior[i];
  check_gradient("rmsnorm dx", analytic, numeric);

  SUBCASE("a bf16 weight gives the same gradient as its widened float copy") {
    std::vector<bf16> wb(w.size());
    std::vector<float> wf(w.size());
    for (std::size_t i = 0; i < w.size(); ++i) {
      wb[i] = bf16(w[i]);
      wf[i] = static_cast<float>(wb[i]);
    }
    std::vector<float> a(x.size(), 0.0f), b(x.size(), 0.0f);
    k::rmsnorm_backward(cview(x, n, d), wb.data(), std::span<float const>(rstd), cview(G, n, d), view(a, n, d));
    k::rmsnorm_backward(cview(x, n, d), wf.data(), std::span<float const>(rstd), cview(G, n, d), view(b, n, d));
    CHECK(a == b);
  }
}

TEST_CASE("rope_backward is the transpose of rope_forward") {
  std::uint64_t const seed = test::seed(102);
  int const heads = 3;
  Index const hd = 8, n = 6, width = heads * hd;
  float const theta = 10000.0f;
  std::vector<std::int32_t> const positions{0, 1, 7, 23, 42, 50};
  auto x = test::normal_vector(static_cast<std::size_t>(n * width), seed, 0);
  auto const G = test::normal_vector(x.size(), seed, 1);
  std::vector<float> y(x.size());
  auto const loss = [&] {
    y = x;
    k::rope_forward(view(y, n, width), positions, heads, hd, theta);
    return dot(G, y);
  };
  auto const numeric = numeric_gradient(x, loss);
  std::vector<float> dx = G;
  k::rope_backward(view(dx, n, width), positions, heads, hd, theta);
  check_gradient("rope dx", widen(dx), numeric);

  // Orthogonality: backward(forward(x)) = x.
  std::vector<float> round = x;
  k::rope_forward(view(round, n, width), positions, heads, hd, theta);
  k::rope_backward(view(round, n, width), positions, heads, hd, theta);
  TINYLORA_CHECK_CLOSE(round, x, 1e-5, 1e-6);
}

TEST_CASE("attention_backward matches finite differences (packed lengths 1, 2, 5; H = 4, H_kv = 2, hd = 4)") {
  std::uint64_t const seed = test::seed(103);
  Index const n = kTokens, wq = kHeads * kHeadDim, wkv = kKvHeads * kHeadDim;
  // q, k, v live side by side in one fused (n, wq + 2 wkv) buffer, so the views have ld > cols.
  Index const ld = wq + 2 * wkv;
  auto qkv = test::normal_vector(static_cast<std::size_t>(n * ld), seed, 0, 1.5f);
  auto const G = test::normal_vector(static_cast<std::size_t>(n * wq), seed, 1);
  std::vector<float> out(static_cast<std::size_t>(n * wq));
  auto const q_view = [&] { return ConstMatrixView<float>(qkv.data(), n, wq, ld); };
  auto const k_view = [&] { return ConstMatrixView<float>(qkv.data() + wq, n, wkv, ld); };
  auto const v_view = [&] { return ConstMatrixView<float>(qkv.data() + wq + wkv, n, wkv, ld); };
  auto const loss = [&] {
    k::attention_forward(q_view(), k_view(), v_view(), kOffsets, kHeads, kKvHeads, kHeadDim, view(out, n, wq));
    return dot(G, out);
  };
  auto const numeric = numeric_gradient(qkv, loss);

  std::vector<float> dqkv(qkv.size(), 7.0f);  // overwritten everywhere inside [0, n)
  k::attention_backward(q_view(), k_view(), v_view(), kOffsets, kHeads, kKvHeads, kHeadDim, cview(G, n, wq),
                        MatrixView<float>(dqkv.data(), n, wq, ld), MatrixView<float>(dqkv.data() + wq, n, wkv, ld),
                        MatrixView<float>(dqkv.data() + wq + wkv, n, wkv, ld));
  auto const split = [&](std::vector<double> const& all, Index first, Index cols) {
    std::vector<double> part;
    for (Index t = 0; t < n; ++t)
      for (Index j = 0; j < cols; ++j) part.push_back(all[static_cast<std::size_t>(t * ld + first + j)]);
    return part;
  };
  auto const analytic = widen(dqkv);
  check_gradient("attention dq", split(analytic, 0, wq), split(numeric, 0, wq));
  check_gradient("attention dk", split(analytic, wq, wkv), split(numeric, wq, wkv));
  check_gradient("attention dv", split(analytic, wq + wkv, wkv), split(numeric, wq + wkv, wkv));

  // The length-1 sequence: its softmax is the constant 1, so dq and dk are exactly zero there.
  for (Index j = 0; j < wq + wkv; ++j) CHECK(dqkv[static_cast<std::size_t>(j)] == 0.0f);
}

TEST_CASE("swiglu_backward matches finite differences, also in place") {
  std::uint64_t const seed = test::seed(104);
  Index const n = 3, f = 7;
  auto gate = test::normal_vector(static_cast<std::size_t>(n * f), seed, 0, 2.5f);
  auto up = test::normal_vector(gate.size(), seed, 1);
  auto const G = test::normal_vector(gate.size(), seed, 2);
  std::vector<float> out(gate.size());
  auto const loss = [&] {
    k::swiglu_forward(cview(gate, n, f), cview(up, n, f), view(out, n, f));
    return dot(G, out);
  };
  auto const num_gate = numeric_gradient(gate, loss);
  auto const num_up = numeric_gradient(up, loss);
  std::vector<float> dgate(gate.size()), dup(gate.size());
  k::swiglu_backward(cview(gate, n, f), cview(up, n, f), cview(G, n, f), view(dgate, n, f), view(dup, n, f));
  check_gradient("swiglu dgate", widen(dgate), num_gate);
  check_gradient("swiglu dup", widen(dup), num_up);

  // In place: dgate over gate, dup over up.
  std::vector<float> g2 = gate, u2 = up;
  k::swiglu_backward(cview(g2, n, f), cview(u2, n, f), cview(G, n, f), view(g2, n, f), view(u2, n, f));
  CHECK(g2 == dgate);
  CHECK(u2 == dup);
}

TEST_CASE("cross_entropy_backward matches finite differences of the mean NLL") {
  std::uint64_t const seed = test::seed(105);
  Index const m = 4, V = 11;
  auto logits = test::normal_vector(static_cast<std::size_t>(m * V), seed, 0, 2.0f);
  std::vector<std::int32_t> const targets{3, 0, 10, 3};
  float const scale = 1.0f / static_cast<float>(m);
  std::vector<float> const weights{0.5f, -1.0f, 2.0f, 1.0f};

  SUBCASE("mean NLL") {
    auto const loss = [&] {
      std::vector<float> z = logits;
      auto const nll = k::cross_entropy_forward(view(z, m, V), targets);
      return double{scale} * std::accumulate(nll.begin(), nll.end(), 0.0);
    };
    auto const numeric = numeric_gradient(logits, loss);
    std::vector<float> dz(logits.size());
    k::cross_entropy_backward(cview(logits, m, V), targets, scale, view(dz, m, V));
    check_gradient("cross-entropy dlogits", widen(dz), numeric);

    // In place, after the forward has run on the same buffer: the model's path (no second LM head).
    std::vector<float> z = logits;
    (void)k::cross_entropy_forward(view(z, m, V), targets);
    k::cross_entropy_backward(cview(z, m, V), targets, scale, view(z, m, V));
    TINYLORA_CHECK_CLOSE(z, dz, 1e-6, 1e-7);
    // Each row of softmax - onehot sums to zero.
    for (Index t = 0; t < m; ++t) {
      double s = 0;
      for (Index j = 0; j < V; ++j) s += dz[static_cast<std::size_t>(t * V + j)];
      CHECK(std::abs(s) < 1e-6);
    }
  }
  SUBCASE("log-softmax input gives the same gradient as the raw logits") {
    std::vector<float> lsm = logits, a(logits.size()), b(logits.size());
    for (Index t = 0; t < m; ++t) {
      double sum = 0;
      for (Index j = 0; j < V; ++j) sum += std::exp(double{logits[static_cast<std::size_t>(t * V + j)]});
      for (Index j = 0; j < V; ++j) lsm[static_cast<std::size_t>(t * V + j)] -= static_cast<float>(std::log(sum));
    }
    k::cross_entropy_backward(cview(logits, m, V), targets, scale, view(a, m, V));
    k::cross_entropy_backward(cview(lsm, m, V), targets, scale, view(b, m, V));
    TINYLORA_CHECK_CLOSE(b, a, 1e-5, 1e-7);
  }
  SUBCASE("per-row weights") {
    auto const loss = [&] {
      std::vector<float> z = logits;
      auto const nll = k::cross_entropy_forward(view(z, m, V), targets);
      double s = 0;
      for (std::size_t t = 0; t < nll.size(); ++t) s += double{weights[t]} * nll[t];
      return double{scale} * s;
    };
    auto const numeric = numeric_gradient(logits, loss);
    std::vector<float> dz(logits.size());
    k::cross_entropy_backward(cview(logits, m, V), targets, scale, view(dz, m, V), weights);
    check_gradient("weighted cross-entropy dlogits", widen(dz), numeric);
  }
  SUBCASE("a target outside the vocabulary is an error") {
    std::vector<float> dz(logits.size());
    std::vector<std::int32_t> const bad{3, 0, 11, 3};
    CHECK_THROWS_AS(k::cross_entropy_backward(cview(logits, m, V), bad, scale, view(dz, m, V)), Error);
  }
}

TEST_CASE("head_backward: the LM head plus cross-entropy, differentiated w.r.t. the hidden state") {
  std::uint64_t const seed = test::seed(106);
  Index const m = 3, d = 6, V = 13;
  auto h = test::normal_vector(static_cast<std::size_t>(m * d), seed, 0);
  auto const E = test::normal_vector(static_cast<std::size_t>(V * d), seed, 1);
  std::vector<std::int32_t> const targets{5, 12, 0};
  float const scale = 1.0f / static_cast<float>(m);
  auto const loss = [&] {
    std::vector<float> z = linear(h, E, m, d, V);  // (m, V) = h E^T
    auto const nll = k::cross_entropy_forward(view(z, m, V), targets);
    return double{scale} * std::accumulate(nll.begin(), nll.end(), 0.0);
  };
  auto const numeric = numeric_gradient(h, loss);
  std::vector<float> z = linear(h, E, m, d, V);
  (void)k::cross_entropy_forward(view(z, m, V), targets);
  k::cross_entropy_backward(cview(z, m, V), targets, scale, view(z, m, V));
  std::vector<float> dh(h.size(), 0.0f);
  k::head_backward(cview(z, m, V), cview(E, V, d), view(dh, m, d));
  check_gradient("head + cross-entropy dh", widen(dh), numeric);

  SUBCASE("bf16 head (blocked widening) against the plain loop; both accumulate") {
    std::vector<bf16> Eb(E.size());
    for (std::size_t i = 0; i < E.size(); ++i) Eb[i] = bf16(E[i]);
    auto const prior = test::normal_vector(dh.size(), seed, 2);
    std::vector<float> got = prior, want = prior;
    k::head_backward(cview(z, m, V), ConstMatrixView<bf16>(Eb.data(), V, d), view(got, m, d));
    k::head_backward_reference(cview(z, m, V), ConstMatrixView<bf16>(Eb.data(), V, d), view(want, m, d));
    TINYLORA_CHECK_CLOSE(got, want, 1e-5, 1e-6);
  }
}

TEST_CASE("a 1-layer attention block: the chained backward kernels give the input gradient") {
  // out = x + attention(rope(norm(x) Wq^T), rope(norm(x) Wk^T), norm(x) Wv^T) Wo^T
  std::uint64_t const seed = test::seed(107);
  Index const n = kTokens, d = 16, wq = kHeads * kHeadDim, wkv = kKvHeads * kHeadDim;
  float const eps = 1e-6f, theta = 10000.0f;
  std::vector<std::int32_t> const positions{0, 0, 1, 44, 45, 46, 47, 48};  // the last sequence continues at 44
  auto x = test::normal_vector(static_cast<std::size_t>(n * d), seed, 0);
  auto const norm_w = test::normal_vector(static_cast<std::size_t>(d), seed, 1);
  float const ws = 1.0f / std::sqrt(static_cast<float>(d));
  auto const Wq = test::normal_vector(static_cast<std::size_t>(wq * d), seed, 2, ws);  // (H hd, d)
  auto const Wk = test::normal_vector(static_cast<std::size_t>(wkv * d), seed, 3, ws);  // (H_kv hd, d)
  auto const Wv = test::normal_vector(static_cast<std::size_t>(wkv * d), seed, 4, ws);  // (H_kv hd, d)
  auto const Wo = test::normal_vector(static_cast<std::size_t>(d * wq), seed, 5, ws);  // (d, H hd)
  auto const G = test::normal_vector(static_cast<std::size_t>(n * d), seed, 6);

  std::vector<float> h(x.size()), rstd(static_cast<std::size_t>(n)), q, kk, v, attn(static_cast<std::size_t>(n * wq));
  auto const forward = [&] {  // fills h, rstd, q, kk, v, attn; returns out (n, d)
    k::rmsnorm_forward(cview(x, n, d), norm_w.data(), eps, view(h, n, d), std::span<float>(rstd));
    q = linear(h, Wq, n, d, wq);
    kk = linear(h, Wk, n, d, wkv);
    v = linear(h, Wv, n, d, wkv);
    k::rope_forward(view(q, n, wq), positions, kHeads, kHeadDim, theta);
    k::rope_forward(view(kk, n, wkv), positions, kKvHeads, kHeadDim, theta);
    k::attention_forward(cview(q, n, wq), cview(kk, n, wkv), cview(v, n, wkv), kOffsets, kHeads, kKvHeads, kHeadDim,
                         view(attn, n, wq));
    std::vector<float> out = linear(attn, Wo, n, wq, d);
    for (std::size_t i = 0; i < out.size(); ++i) out[i] += x[i];
    return out;
  };
  auto const numeric = numeric_gradient(x, [&] { return dot(G, forward()); });

  (void)forward();
  std::vector<float> dattn(attn.size(), 0.0f), dq(q.size()), dk(kk.size()), dv(v.size()), dh(h.size(), 0.0f);
  linear_backward(G, Wo, n, wq, d, dattn);
  k::attention_backward(cview(q, n, wq), cview(kk, n, wkv), cview(v, n, wkv), kOffsets, kHeads, kKvHeads, kHeadDim,
                        cview(dattn, n, wq), view(dq, n, wq), view(dk, n, wkv), view(dv, n, wkv));
  k::rope_backward(view(dq, n, wq), positions, kHeads, kHeadDim, theta);
  k::rope_backward(view(dk, n, wkv), positions, kKvHeads, kHeadDim, theta);
  linear_backward(dq, Wq, n, d, wq, dh);
  linear_backward(dk, Wk, n, d, wkv, dh);
  linear_backward(dv, Wv, n, d, wkv, dh);
  std::vector<float> dx = G;  // the residual path
  k::rmsnorm_backward(cview(x, n, d), norm_w.data(), std::span<float const>(rstd), cview(dh, n, d), view(dx, n, d));
  check_gradient("attention block dx", widen(dx), numeric);

  // The block's own contribution (dx - G) is checked too, so the residual cannot hide an error.
  std::vector<double> own(dx.size()), own_numeric(dx.size());
  for (std::size_t i = 0; i < dx.size(); ++i) {
    own[i] = double{dx[i]} - G[i];
    own_numeric[i] = numeric[i] - G[i];
  }
  check_gradient("attention block dx minus residual", own, own_numeric);
}

// The optimized forwards against their plain versions (kernels.hpp keeps both side by side).
TEST_CASE("attention_forward in query blocks equals the plain per-query loop (lengths across block edges)") {
  std::uint64_t const seed = test::seed(111);
  std::vector<Index> const offsets{0, 1, 8, 78, 213};  // lengths 1, 7, 70, 135
  Index const n = offsets.back(), heads = 4, kv_heads = 2, hd = 8, wq = heads * hd, wkv = kv_heads * hd;
  auto const q = test::normal_vector(static_cast<std::size_t>(n * wq), seed, 0, 1.5f);
  auto const kk = test::normal_vector(static_cast<std::size_t>(n * wkv), seed, 1, 1.5f);
  auto const v = test::normal_vector(static_cast<std::size_t>(n * wkv), seed, 2);
  std::vector<float> want(static_cast<std::size_t>(n * wq));
  k::attention_forward_reference(cview(q, n, wq), cview(kk, n, wkv), cview(v, n, wkv), offsets, heads, kv_heads, hd,
                                 view(want, n, wq));
  for (Index block : {Index{1}, Index{4}, Index{64}, Index{1000}}) {
    INFO("row_block " << block);
    std::vector<float> got(want.size(), NAN);
    k::attention_forward(cview(q, n, wq), cview(kk, n, wkv), cview(v, n, wkv), offsets, heads, kv_heads, hd,
                         view(got, n, wq), block);
    TINYLORA_CHECK_CLOSE(got, widen(want), 1e-5, 1e-6);
  }
}

TEST_CASE("cross_entropy_forward (vectorized float exps) is within 1e-6 of the all-double reference") {
  std::uint64_t const seed = test::seed(112);
  Index const m = 5, V = 49152;  // SmolLM2's vocabulary width; logits spread like a real LM head's
  auto logits = test::normal_vector(static_cast<std::size_t>(m * V), seed, 0, 8.0f);
  std::vector<std::int32_t> const targets{0, 17, 49151, 20000, 3};
  auto const want = k::cross_entropy_forward_reference(view(logits, m, V), targets);
  auto const got = k::cross_entropy_forward(view(logits, m, V), targets);
  for (Index t = 0; t < m; ++t) {
    INFO("row " << t << ": " << got[static_cast<std::size_t>(t)] << " vs " << want[static_cast<std::size_t>(t)]);
    CHECK(std::abs(got[static_cast<std::size_t>(t)] - want[static_cast<std::size_t>(t)]) <= 1e-6 * std::abs(want[static_cast<std::size_t>(t)]));
  }
}
