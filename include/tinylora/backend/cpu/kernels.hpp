// tinylora/backend/cpu/kernels.hpp: the decoder's CPU kernels, as <op>_forward functions over
// row-major views: embedding gather, RMSNorm, RoPE, causal grouped-query attention over a packed
// batch of sequences, SwiGLU, and the masked cross-entropy. Legend: n tokens (all sequences packed),
// d hidden, H heads, H_kv key/value heads, hd head dim, f feed-forward width, V vocabulary.
#pragma once

#include "tinylora/core/eigen.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "tinylora/core/dot.hpp"
#include "tinylora/core/error.hpp"
#include "tinylora/core/profile.hpp"
#include "tinylora/core/tensor.hpp"

namespace tinylora::backend::cpu {

using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMap = Eigen::Map<RowMajor const, 0, Eigen::OuterStride<>>;
using Map = Eigen::Map<RowMajor, 0, Eigen::OuterStride<>>;

/// out[t, :] = table[ids[t], :].   table: (V, d), ids: (n), out: (n, d)
template <class W>
void embedding_forward(ConstMatrixView<W> table, std::span<std::int32_t const> ids, MatrixView<float> out) {
  TINYLORA_PROFILE_SCOPE("embedding");
  for (std::size_t t = 0; t < ids.size(); ++t) {
    TINYLORA_CHECK(ids[t] >= 0 && ids[t] < table.rows, "embedding_forward(): token id ", ids[t],
                   " is outside the vocabulary [0, ", table.rows, ")");
    W const* row = table.data + static_cast<Index>(ids[t]) * table.ld;
    float* dst = out.data + static_cast<Index>(t) * out.ld;
    for (Index j = 0; j < table.cols; ++j) dst[j] = static_cast<float>(row[j]);
  }
}

/// y = x / sqrt(mean(x^2) + eps) * weight, per row.   x, y: (n, d), weight: (d), rstd: (n) or empty
template <class W>
void rmsnorm_forward(ConstMatrixView<float> x, W const* weight, float eps, MatrixView<float> y,
                     std::span<float> rstd = {}) {
  TINYLORA_PROFILE_SCOPE("rmsnorm");
#pragma omp parallel for if (x.rows > 64)
  for (Index t = 0; t < x.rows; ++t) {
    float const* xr = x.data + t * x.ld;
    double ss = 0;
    for (Index j = 0; j < x.cols; ++j) ss += double{xr[j]} * xr[j];
    float const r = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(x.cols) + eps));
    if (!rstd.empty()) rstd[static_cast<std::size_t>(t)] = r;
    float* yr = y.data + t * y.ld;
    for (Index j = 0; j < x.cols; ++j) yr[j] = xr[j] * r * static_cast<float>(weight[j]);
  }
}

/// Rotary position embedding, Hugging Face's rotate-half layout: in each head, dimension i pairs
/// with i + hd/2 and both rotate by angle pos * theta^(-2i/hd).
///   x: (n, n_heads * hd) rotated in place, positions: (n)
inline void rope_forward(MatrixView<float> x, std::span<std::int32_t const> positions, int n_heads, Index head_dim,
                         float theta, bool inverse = false) {
  TINYLORA_PROFILE_SCOPE("rope");
  Index const half = head_dim / 2;
  std::vector<float> inv_freq(static_cast<std::size_t>(half));
  for (Index i = 0; i < half; ++i)
    inv_freq[static_cast<std::size_t>(i)] =
        static_cast<float>(1.0 / std::pow(double{theta}, 2.0 * static_cast<double>(i) / static_cast<double>(head_dim)));
#pragma omp parallel for if (x.rows > 64)
  for (Index t = 0; t < x.rows; ++t) {
    float* row = x.data + t * x.ld;
    for (Index i = 0; i < half; ++i) {
      // The angle in float, as transformers computes it (inv_freq * position in fp32).
      float const angle = static_cast<float>(positions[static_cast<std::size_t>(t)]) * inv_freq[static_cast<std::size_t>(i)];
      float const c = std::cos(angle), s = inverse ? -std::sin(angle) : std::sin(angle);
      for (int h = 0; h < n_heads; ++h) {
        float* head = row + h * head_dim;
        float const a = head[i], b = head[i + half];
        head[i] = a * c - b * s;
        head[i + half] = b * c + a * s;
      }
    }
  }
}

/// row[0, valid) = softmax(row[0, valid)); row[valid, cols) = 0. Vectorized exp (Eigen's, ~1 ulp).
inline void softmax_prefix(float* row, Index valid, Index cols) {
  Eigen::Map<Eigen::ArrayXf> z(row, valid);
  float const m = z.maxCoeff();
  z = (z - m).exp();
  z *= 1.0f / z.sum();
  std::fill(row + valid, row + cols, 0.0f);
}

/// P = softmax over each row i of (Q K^T * scale) restricted to columns j <= i (causal); the masked
/// upper triangle is 0. Shared by attention_forward and attention_backward (which recomputes P).
///   Q, K: (len, hd), P: (len, len) resized here
template <class MQ, class MK>
void causal_softmax(MQ const& Q, MK const& K, float scale, RowMajor& P) {
  Index const len = Q.rows();
  P.resize(len, len);
  P.noalias() = (Q * K.transpose()) * scale;
  for (Index i = 0; i < len; ++i) softmax_prefix(P.data() + i * len, i + 1, len);
}

/// The plain version of attention_forward below: one query row, one key at a time.
inline void attention_forward_reference(ConstMatrixView<float> q, ConstMatrixView<float> k, ConstMatrixView<float> v,
                                        std::span<Index const> offsets, int n_heads, int n_kv_heads, Index head_dim,
                                        MatrixView<float> out) {
  int const group = n_heads / n_kv_heads;
  float const scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  for (std::size_t s = 0; s + 1 < offsets.size(); ++s)
    for (Index t = offsets[s]; t < offsets[s + 1]; ++t)
      for (int h = 0; h < n_heads; ++h) {
        int const g = h / group;
        std::vector<double> p;  // (t - begin + 1) scores, then weights
        for (Index u = offsets[s]; u <= t; ++u) {
          double dot = 0;
          for (Index j = 0; j < head_dim; ++j) dot += double{q(t, h * head_dim + j)} * k(u, g * head_dim + j);
          p.push_back(dot * scale);
        }
        double const m = *std::max_element(p.begin(), p.end());
        double sum = 0;
        for (double& x : p) sum += (x = std::exp(x - m));
        for (Index j = 0; j < head_dim; ++j) {
          double acc = 0;
          for (Index u = offsets[s]; u <= t; ++u) acc += p[static_cast<std::size_t>(u - offsets[s])] / sum * v(u, g * head_dim + j);
          out(t, h * head_dim + j) = static_cast<float>(acc);
        }
      }
}

/// Causal grouped-query attention over packed sequences. Sequence s owns rows
/// [offsets[s], offsets[s+1]) of q, k, v, out; query head h reads key/value head h / (H / H_kv).
///   out[t, h] = sum_{u <= t, same sequence} softmax_u(q[t,h] . k[u,g] / sqrt(hd)) v[u,g]
/// Queries go in blocks of row_block rows; a block only scores the keys up to its last row, so the
/// masked upper triangle is (mostly) never computed: at 512 tokens and 64-row blocks, 56 % of the
/// full (len, len) products.
///   q, out: (n, H hd), k, v: (n, H_kv hd), offsets: (n_seq + 1)
inline void attention_forward(ConstMatrixView<float> q, ConstMatrixView<float> k, ConstMatrixView<float> v,
                              std::span<Index const> offsets, int n_heads, int n_kv_heads, Index head_dim,
                              MatrixView<float> out, Index row_block = 64) {
  TINYLORA_PROFILE_SCOPE("attention");
  TINYLORA_CHECK(row_block > 0, "attention_forward(): row_block must be positive (got ", row_block, ")");
  int const group = n_heads / n_kv_heads;
  float const scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  Index const n_seq = static_cast<Index>(offsets.size()) - 1;
#pragma omp parallel
  {
    RowMajor scores;
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (Index s = 0; s < n_seq; ++s)
      for (int h = 0; h < n_heads; ++h) {
        Index const begin = offsets[static_cast<std::size_t>(s)], len = offsets[static_cast<std::size_t>(s) + 1] - begin;
        if (len == 0) continue;
        int const g = h / group;
        ConstMap const Q(q.data + begin * q.ld + h * head_dim, len, head_dim, Eigen::OuterStride<>(q.ld));
        ConstMap const K(k.data + begin * k.ld + g * head_dim, len, head_dim, Eigen::OuterStride<>(k.ld));
        ConstMap const Vh(v.data + begin * v.ld + g * head_dim, len, head_dim, Eigen::OuterStride<>(v.ld));
        Map O(out.data + begin * out.ld + h * head_dim, len, head_dim, Eigen::OuterStride<>(out.ld));
        for (Index r0 = 0; r0 < len; r0 += row_block) {
          Index const rows = std::min(row_block, len - r0), keys = r0 + rows;  // queries [r0, keys) see keys [0, keys)
          scores.resize(rows, keys);                                           // (rows, keys)
          scores.noalias() = (Q.middleRows(r0, rows) * K.topRows(keys).transpose()) * scale;
          for (Index i = 0; i < rows; ++i) softmax_prefix(scores.data() + i * keys, r0 + i + 1, keys);
          O.middleRows(r0, rows).noalias() = scores * Vh.topRows(keys);
        }
      }
  }
}

/// Attention of one new query row per sequence against a key/value cache (incremental decoding).
///   q, out: (n_seq, H hd); cache_k, cache_v: per sequence s a (cache_len[s], H_kv hd) block starting
///   at row s * capacity of the (n_seq * capacity, H_kv hd) cache views.
inline void attention_decode(ConstMatrixView<float> q, ConstMatrixView<float> cache_k, ConstMatrixView<float> cache_v,
                             Index capacity, std::span<Index const> cache_len, std::span<Index const> slots,
                             int n_heads, int n_kv_heads, Index head_dim, MatrixView<float> out) {
  TINYLORA_PROFILE_SCOPE("attention (decode)");
  int const group = n_heads / n_kv_heads;
  float const scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  Index const n = q.rows;
#pragma omp parallel
  {
    Eigen::ArrayXf scores;  // (len) aligned by Eigen's allocator
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (Index s = 0; s < n; ++s)
      for (int h = 0; h < n_heads; ++h) {
        Index const len = cache_len[static_cast<std::size_t>(s)];
        Index const base = slots[static_cast<std::size_t>(s)] * capacity;
        int const g = h / group;
        float const* qh = q.data + s * q.ld + h * head_dim;
        // Vectorized, with every result independent of where the buffers sit in memory (Eigen's
        // reductions on unaligned maps peel a data-dependent head, which changed the bits between
        // runs): dots in fixed lanes, exp and sum on an aligned array, plain axpy loops.
        if (scores.size() < len) scores.resize(len);
        for (Index u = 0; u < len; ++u)
          scores(u) = dot_lanes(qh, cache_k.data + (base + u) * cache_k.ld + g * head_dim, head_dim) * scale;
        auto p = scores.head(len);  // (len) scores, then probabilities
        p = (p - p.maxCoeff()).exp();
        float const inv_sum = 1.0f / p.sum();
        float* oh = out.data + s * out.ld + h * head_dim;
        std::fill(oh, oh + head_dim, 0.0f);
        for (Index u = 0; u < len; ++u) {
          float const w = p(u) * inv_sum;
          float const* vr = cache_v.data + (base + u) * cache_v.ld + g * head_dim;
          for (Index j = 0; j < head_dim; ++j) oh[j] += w * vr[j];
        }
      }
  }
}

/// out = silu(gate) * up = gate / (1 + exp(-gate)) * up.   gate, up, out: (n, f)
inline void swiglu_forward(ConstMatrixView<float> gate, ConstMatrixView<float> up, MatrixView<float> out) {
  TINYLORA_PROFILE_SCOPE("swiglu");
#pragma omp parallel for if (gate.rows > 16)
  for (Index t = 0; t < gate.rows; ++t) {
    Eigen::Map<Eigen::ArrayXf const> const g(gate.data + t * gate.ld, gate.cols), u(up.data + t * up.ld, up.cols);  // (f)
    Eigen::Map<Eigen::ArrayXf>(out.data + t * out.ld, out.cols) = g / (1.0f + (-g).exp()) * u;  // vectorized exp
  }
}

/// y[t, :] += bias.   y: (n, m), bias: (m)
template <class W>
void add_bias(MatrixView<float> y, W const* bias) {
  for (Index t = 0; t < y.rows; ++t)
    for (Index j = 0; j < y.cols; ++j) y(t, j) += static_cast<float>(bias[j]);
}

/// The plain version of cross_entropy_forward: every exp and the sum in double.
inline std::vector<double> cross_entropy_forward_reference(ConstMatrixView<float> logits, std::span<std::int32_t const> targets) {
  std::vector<double> nll(static_cast<std::size_t>(logits.rows));
  for (Index t = 0; t < logits.rows; ++t) {
    float const* row = logits.data + t * logits.ld;
    float const m = *std::max_element(row, row + logits.cols);
    double sum = 0;
    for (Index j = 0; j < logits.cols; ++j) sum += std::exp(double{row[j]} - m);
    nll[static_cast<std::size_t>(t)] = m + std::log(sum) - row[targets[static_cast<std::size_t>(t)]];
  }
  return nll;
}

/// log sum_j exp(z[j]) of one row. The exps are Eigen's vectorized float exp, summed in float over
/// blocks of 256 and in double across blocks: within ~1e-6 relative of an all-double sum.   z: (n)
inline double log_sum_exp(float const* z, Index n) {
  constexpr Index kBlock = 256;
  Eigen::Map<Eigen::ArrayXf const> const row(z, n);  // (n)
  float const m = row.maxCoeff();
  double sum = 0;
  for (Index j = 0; j < n; j += kBlock) sum += (row.segment(j, std::min(kBlock, n - j)) - m).exp().sum();
  return m + std::log(sum);
}

/// -log softmax(logits)[target] per row through log_sum_exp; logits (m, V) are left unchanged.
inline std::vector<double> cross_entropy_forward(ConstMatrixView<float> logits, std::span<std::int32_t const> targets) {
  TINYLORA_PROFILE_SCOPE("cross-entropy");
  std::vector<double> nll(static_cast<std::size_t>(logits.rows));
#pragma omp parallel for
  for (Index t = 0; t < logits.rows; ++t) {
    float const* row = logits.data + t * logits.ld;
    nll[static_cast<std::size_t>(t)] = log_sum_exp(row, logits.cols) - row[targets[static_cast<std::size_t>(t)]];
  }
  return nll;
}

}  // namespace tinylora::backend::cpu
