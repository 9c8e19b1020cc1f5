// tinylora/backend/cpu/kernels_backward.hpp: the <op>_backward partner of each decoder kernel in
// kernels.hpp (RMSNorm, RoPE, causal grouped-query attention, SwiGLU, cross-entropy, LM head), so the
// gradient of the loss can flow from the logits back to the adapters. Same legend: n tokens (all
// sequences packed), d hidden, H heads, H_kv key/value heads, hd head dim, f feed-forward width, V vocabulary.
#pragma once

#include "tinylora/core/eigen.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "tinylora/backend/cpu/gemm.hpp"
#include "tinylora/backend/cpu/kernels.hpp"
#include "tinylora/core/error.hpp"
#include "tinylora/core/profile.hpp"
#include "tinylora/core/tensor.hpp"

namespace tinylora::backend::cpu {

/// RMSNorm with a frozen weight (no dw). Forward: y_j = x_j r w_j with r = (mean_k x_k^2 + eps)^(-1/2)
/// (the `rstd` that rmsnorm_forward saved). Since dr/dx_k = -r^3 x_k / d, per row:
///   dx_k += r w_k dy_k - (r^3 / d) x_k sum_j dy_j w_j x_j
/// ACCUMULATES into dx (the residual stream's gradient). dx must not alias dy.
///   x, dy, dx: (n, d), weight: (d), rstd: (n)
template <class W>
void rmsnorm_backward(ConstMatrixView<float> x, W const* weight, std::span<float const> rstd, ConstMatrixView<float> dy,
                      MatrixView<float> dx) {
  TINYLORA_PROFILE_SCOPE("rmsnorm backward");
  TINYLORA_CHECK(static_cast<Index>(rstd.size()) == x.rows && dy.rows == x.rows && dy.cols == x.cols &&
                     dx.rows == x.rows && dx.cols == x.cols,
                 "rmsnorm_backward(): shape mismatch (x is ", x.rows, "x", x.cols, ", rstd has ", rstd.size(),
                 ", dy is ", dy.rows, "x", dy.cols, ", dx is ", dx.rows, "x", dx.cols,
                 "). Hint: pass the rstd span that rmsnorm_forward filled.");
  double const inv_d = 1.0 / static_cast<double>(x.cols);
#pragma omp parallel for if (x.rows > 64)
  for (Index t = 0; t < x.rows; ++t) {
    float const* xr = x.data + t * x.ld;
    float const* dyr = dy.data + t * dy.ld;
    float* dxr = dx.data + t * dx.ld;
    float const r = rstd[static_cast<std::size_t>(t)];
    double dot = 0;  // sum_j dy_j w_j x_j
    for (Index j = 0; j < x.cols; ++j) dot += double{dyr[j]} * static_cast<float>(weight[j]) * xr[j];
    float const c = static_cast<float>(double{r} * r * r * dot * inv_d);  // r^3 / d * dot
    for (Index j = 0; j < x.cols; ++j) dxr[j] += r * static_cast<float>(weight[j]) * dyr[j] - c * xr[j];
  }
}

/// RoPE is an orthogonal rotation per (token, head, pair i, i + hd/2), so its transpose is the
/// rotation by the negative angle:  [da; db] <- [c s; -s c] [da; db],  in place.
/// Equivalent to rope_forward(dx, ..., inverse = true), which uses the same fp32 angles.
///   dx: (n, n_heads * hd) rotated in place, positions: (n)
inline void rope_backward(MatrixView<float> dx, std::span<std::int32_t const> positions, int n_heads, Index head_dim,
                          float theta) {
  TINYLORA_PROFILE_SCOPE("rope backward");
  TINYLORA_CHECK(static_cast<Index>(positions.size()) == dx.rows && dx.cols >= n_heads * head_dim && head_dim % 2 == 0,
                 "rope_backward(): shape mismatch (dx is ", dx.rows, "x", dx.cols, ", ", positions.size(),
                 " positions, ", n_heads, " heads of ", head_dim, ")");
  rope_forward(dx, positions, n_heads, head_dim, theta, /*inverse=*/true);
}

/// Backward of attention_forward, per (sequence s, kv head g). The probabilities are recomputed from
/// q and k (nothing stored by the forward; the only scratch is one (len, len) block per thread, like
/// the forward's). With S = Q K^T / sqrt(hd) causally masked, P = softmax_rows(S), O = P V:
///   dV = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(dP * P)),
///   dQ = dS K / sqrt(hd),   dK = dS^T Q / sqrt(hd).
/// Grouped-query: dk and dv of kv head g sum over its H / H_kv query heads.
/// OVERWRITES the rows [offsets[0], offsets.back()) of dq, dk, dv (their first H hd or H_kv hd columns).
///   q, dout, dq: (n, H hd), k, v, dk, dv: (n, H_kv hd), offsets: (n_seq + 1)
inline void attention_backward(ConstMatrixView<float> q, ConstMatrixView<float> k, ConstMatrixView<float> v,
                               std::span<Index const> offsets, int n_heads, int n_kv_heads, Index head_dim,
                               ConstMatrixView<float> dout, MatrixView<float> dq, MatrixView<float> dk,
                               MatrixView<float> dv) {
  TINYLORA_PROFILE_SCOPE("attention backward");
  TINYLORA_CHECK(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "attention_backward(): ", n_heads,
                 " query heads are not a multiple of ", n_kv_heads, " kv heads");
  TINYLORA_CHECK(!offsets.empty() && offsets.front() >= 0 && offsets.back() <= q.rows, "attention_backward(): offsets (",
                 offsets.size(), " entries, last ", offsets.empty() ? Index{-1} : offsets.back(),
                 ") do not fit the ", q.rows, " rows of q");
  TINYLORA_CHECK(q.cols >= n_heads * head_dim && dout.cols >= n_heads * head_dim && dq.cols >= n_heads * head_dim &&
                     k.cols >= n_kv_heads * head_dim && v.cols >= n_kv_heads * head_dim &&
                     dk.cols >= n_kv_heads * head_dim && dv.cols >= n_kv_heads * head_dim &&
                     k.rows == q.rows && v.rows == q.rows && dout.rows == q.rows && dq.rows == q.rows &&
                     dk.rows == q.rows && dv.rows == q.rows,
                 "attention_backward(): shape mismatch (expected q, dout, dq: (", q.rows, ", ", n_heads * head_dim,
                 "), k, v, dk, dv: (", q.rows, ", ", n_kv_heads * head_dim, "))");
  int const group = n_heads / n_kv_heads;
  float const scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  Index const n_seq = static_cast<Index>(offsets.size()) - 1;
  for (Index s = 0; s < n_seq; ++s)
    TINYLORA_CHECK(offsets[static_cast<std::size_t>(s)] <= offsets[static_cast<std::size_t>(s) + 1],
                   "attention_backward(): offsets must not decrease (offsets[", s, "] = ", offsets[static_cast<std::size_t>(s)],
                   ", offsets[", s + 1, "] = ", offsets[static_cast<std::size_t>(s) + 1], ")");
#pragma omp parallel
  {
    RowMajor P, dP;  // (len, len) scratch per thread
    Eigen::VectorXf row_dot;  // (len)
    // One task per (sequence, kv head): the query heads of a group write the same dk, dv block.
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (Index s = 0; s < n_seq; ++s)
      for (int g = 0; g < n_kv_heads; ++g) {
        Index const begin = offsets[static_cast<std::size_t>(s)], len = offsets[static_cast<std::size_t>(s) + 1] - begin;
        if (len == 0) continue;
        ConstMap const K(k.data + begin * k.ld + g * head_dim, len, head_dim, Eigen::OuterStride<>(k.ld));
        ConstMap const Vg(v.data + begin * v.ld + g * head_dim, len, head_dim, Eigen::OuterStride<>(v.ld));
        Map dK(dk.data + begin * dk.ld + g * head_dim, len, head_dim, Eigen::OuterStride<>(dk.ld));  // (len, hd)
        Map dV(dv.data + begin * dv.ld + g * head_dim, len, head_dim, Eigen::OuterStride<>(dv.ld));  // (len, hd)
        dK.setZero();
        dV.setZero();
        for (int h = g * group; h < (g + 1) * group; ++h) {
          ConstMap const Q(q.data + begin * q.ld + h * head_dim, len, head_dim, Eigen::OuterStride<>(q.ld));
          ConstMap const dO(dout.data + begin * dout.ld + h * head_dim, len, head_dim, Eigen::OuterStride<>(dout.ld));
          Map dQ(dq.data + begin * dq.ld + h * head_dim, len, head_dim, Eigen::OuterStride<>(dq.ld));  // (len, hd)
          // P: the forward's causal softmax, recomputed.
          causal_softmax(Q, K, scale, P);  // (len, len)
          dV.noalias() += P.transpose() * dO;
          dP.resize(len, len);
          dP.noalias() = dO * Vg.transpose();
          // dS = P * (dP - rowsum(dP * P)), written over dP; masked entries have P = 0, so dS = 0 there.
          row_dot = (dP.cwiseProduct(P)).rowwise().sum();
          for (Index i = 0; i < len; ++i)
            for (Index j = 0; j < len; ++j) dP(i, j) = P(i, j) * (dP(i, j) - row_dot(i));
          dQ.noalias() = (dP * K) * scale;
          dK.noalias() += (dP.transpose() * Q) * scale;
        }
      }
  }
}

/// out = silu(g) u with silu(g) = g s, s = sigmoid(g); silu'(g) = s (1 + g (1 - s)). Elementwise:
///   dgate = dout u s (1 + g (1 - s)),   dup = dout silu(g)
/// OVERWRITES dgate and dup. Each element reads g, u, dout before writing, so dgate may share
/// storage with gate or dout, and dup with up or dout (not dgate with dup).
///   gate, up, dout, dgate, dup: (n, f)
inline void swiglu_backward(ConstMatrixView<float> gate, ConstMatrixView<float> up, ConstMatrixView<float> dout,
                            MatrixView<float> dgate, MatrixView<float> dup) {
  TINYLORA_PROFILE_SCOPE("swiglu backward");
  TINYLORA_CHECK(up.rows == gate.rows && up.cols == gate.cols && dout.rows == gate.rows && dout.cols == gate.cols &&
                     dgate.rows == gate.rows && dgate.cols == gate.cols && dup.rows == gate.rows && dup.cols == gate.cols,
                 "swiglu_backward(): shape mismatch (gate is ", gate.rows, "x", gate.cols, ", up ", up.rows, "x", up.cols,
                 ", dout ", dout.rows, "x", dout.cols, ", dgate ", dgate.rows, "x", dgate.cols, ", dup ", dup.rows, "x",
                 dup.cols, ")");
#pragma omp parallel for if (gate.rows > 16)
  for (Index t = 0; t < gate.rows; ++t)
    for (Index j = 0; j < gate.cols; ++j) {
      float const g = gate(t, j), u = up(t, j), dy = dout(t, j);
      float const s = 1.0f / (1.0f + std::exp(-g));
      dgate(t, j) = dy * u * s * (1.0f + g * (1.0f - s));
      dup(t, j) = dy * g * s;
    }
}

/// Gradient of L = scale * sum_t w_t nll_t (scale = 1 / n_targets gives the mean NLL) w.r.t. the logits:
///   dlogits[t, :] = scale w_t (softmax(z_t) - onehot(targets[t]))        (w_t = 1 when weights is empty)
/// `z` may hold the raw logits or their log-softmax: the two differ by a constant per row, which
/// softmax ignores (cross_entropy_forward leaves the logits unchanged).
/// So the model runs the LM head once: logits -> cross_entropy_forward -> cross_entropy_backward with
/// dlogits = the same storage (allowed: each row is read fully before it is written) -> head_backward.
/// OVERWRITES dlogits.
///   z, dlogits: (m, V), targets: (m), weights: (m) or empty
inline void cross_entropy_backward(ConstMatrixView<float> z, std::span<std::int32_t const> targets, float scale,
                                   MatrixView<float> dlogits, std::span<float const> weights = {}) {
  TINYLORA_PROFILE_SCOPE("cross-entropy backward");
  TINYLORA_CHECK(static_cast<Index>(targets.size()) == z.rows && dlogits.rows == z.rows && dlogits.cols == z.cols &&
                     (weights.empty() || static_cast<Index>(weights.size()) == z.rows),
                 "cross_entropy_backward(): shape mismatch (logits are ", z.rows, "x", z.cols, ", ", targets.size(),
                 " targets, ", weights.size(), " weights, dlogits ", dlogits.rows, "x", dlogits.cols, ")");
  for (std::int32_t const target : targets)  // checked before the parallel loop: no throw inside it
    TINYLORA_CHECK(target >= 0 && target < z.cols, "cross_entropy_backward(): target ", target,
                   " is outside the vocabulary [0, ", z.cols, ")");
#pragma omp parallel for if (z.rows > 4)
  for (Index t = 0; t < z.rows; ++t) {
    std::int32_t const target = targets[static_cast<std::size_t>(t)];
    float const* zr = z.data + t * z.ld;
    float* gr = dlogits.data + t * dlogits.ld;
    auto const lse = static_cast<float>(log_sum_exp(zr, z.cols));
    float const a = scale * (weights.empty() ? 1.0f : weights[static_cast<std::size_t>(t)]);
    // gr = a softmax(z) with Eigen's vectorized exp (in place when gr is z's storage).
    Eigen::Map<Eigen::ArrayXf>(gr, z.cols) = a * (Eigen::Map<Eigen::ArrayXf const>(zr, z.cols) - lse).exp();
    gr[target] -= a;
  }
}

/// head_backward's plain loop, the reference the tests compare against:
///   dh[t, j] += sum_v dlogits[t, v] E_head[v, j]
template <class W>
void head_backward_reference(ConstMatrixView<float> dlogits, ConstMatrixView<W> E_head, MatrixView<float> dh) {
  for (Index t = 0; t < dlogits.rows; ++t)
    for (Index j = 0; j < E_head.cols; ++j) {
      float acc = 0;
      for (Index v = 0; v < dlogits.cols; ++v) acc += dlogits(t, v) * static_cast<float>(E_head(v, j));
      dh(t, j) += acc;
    }
}

/// The LM head is logits = h E_head^T (E_head frozen, often the tied embedding), so the gradient
/// reaching the final norm's output is  dh = dlogits E_head.  ACCUMULATES into dh; the caller
/// scatters dh's rows back to the tokens whose logits were computed.
/// A 16-bit E_head is widened to float in blocks of vocabulary rows (fp32 accumulation, bounded scratch).
///   dlogits: (m, V), E_head: (V, d), dh: (m, d)
template <class W>
void head_backward(ConstMatrixView<float> dlogits, ConstMatrixView<W> E_head, MatrixView<float> dh) {
  TINYLORA_PROFILE_SCOPE("lm head backward (GEMM)");
  TINYLORA_CHECK(dlogits.cols == E_head.rows && dh.rows == dlogits.rows && dh.cols == E_head.cols,
                 "head_backward(): shape mismatch (dlogits is ", dlogits.rows, "x", dlogits.cols, ", E_head ",
                 E_head.rows, "x", E_head.cols, ", dh ", dh.rows, "x", dh.cols, ")");
  if constexpr (std::is_same_v<W, float>) {
    Gemm::gemm(Op::N, Op::N, 1.0f, dlogits, E_head, 1.0f, dh);
  } else {
    constexpr Index kBlock = 4096;  // vocabulary rows widened at a time
    RowMajor E;                     // (block, d)
    for (Index v0 = 0; v0 < E_head.rows; v0 += kBlock) {
      Index const nv = std::min(kBlock, E_head.rows - v0);
      E.resize(nv, E_head.cols);
      for (Index v = 0; v < nv; ++v)
        for (Index j = 0; j < E_head.cols; ++j) E(v, j) = static_cast<float>(E_head(v0 + v, j));
      ConstMatrixView<float> const G{dlogits.data + v0, dlogits.rows, nv, dlogits.ld};  // (m, block) columns of dlogits
      Gemm::gemm(Op::N, Op::N, 1.0f, G, ConstMatrixView<float>{E.data(), nv, E_head.cols, E_head.cols}, 1.0f, dh);
    }
  }
}

}  // namespace tinylora::backend::cpu
