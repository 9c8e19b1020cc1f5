// tinylora/backend/cuda/kernels.cuh: the decoder's forward operations for backend::Cuda, each the
// counterpart of the function of the same name in backend/cpu/kernels.hpp (same arguments, with
// index arrays in device memory). Each is a Thrust for_each over a __host__ __device__ functor: one
// element, one row or one (query, head) pair per call. These are the plain versions: written for
// correctness and for the OpenMP-system parity tests; the attention and the row reductions are the
// ones a hand-written CUDA kernel would replace (shared-memory tiles, warp reductions).
#pragma once

#include <cmath>
#include <cstdint>

#include "tinylora/backend/cuda/runtime.cuh"

namespace tinylora::backend::cuda {

using cuda_detail::for_each_index;

namespace detail {

template <class W>
struct EmbeddingGather {
  ConstMatrixView<W> table;
  std::int32_t const* ids;
  MatrixView<float> out;
  TINYLORA_HOST_DEVICE void operator()(Index e) const {
    Index const t = e / out.cols, j = e % out.cols;
    out(t, j) = static_cast<float>(table(ids[t], j));
  }
};

template <class W>
struct RmsNormRow {
  ConstMatrixView<float> x;
  W const* weight;
  float eps;
  MatrixView<float> y;
  float* rstd;  // (n) or null
  TINYLORA_HOST_DEVICE void operator()(Index t) const {
    double ss = 0;
    for (Index j = 0; j < x.cols; ++j) ss += static_cast<double>(x(t, j)) * x(t, j);
    float const r = static_cast<float>(1.0 / sqrt(ss / static_cast<double>(x.cols) + eps));
    if (rstd != nullptr) rstd[t] = r;
    for (Index j = 0; j < x.cols; ++j) y(t, j) = x(t, j) * r * static_cast<float>(weight[j]);
  }
};

struct RopePair {
  MatrixView<float> x;
  std::int32_t const* positions;
  int n_heads;
  Index head_dim;
  float theta;
  bool inverse;
  TINYLORA_HOST_DEVICE void operator()(Index e) const {
    Index const half = head_dim / 2, t = e / half, i = e % half;
    float const inv_freq = static_cast<float>(1.0 / pow(static_cast<double>(theta), 2.0 * static_cast<double>(i) / static_cast<double>(head_dim)));
    float const angle = static_cast<float>(positions[t]) * inv_freq;  // in float, as transformers does
    float const c = cosf(angle), s = inverse ? -sinf(angle) : sinf(angle);
    for (int h = 0; h < n_heads; ++h) {
      float& a = x(t, h * head_dim + i);
      float& b = x(t, h * head_dim + i + half);
      float const a0 = a, b0 = b;
      a = a0 * c - b0 * s;
      b = b0 * c + a0 * s;
    }
  }
};

struct SwiGlu {
  ConstMatrixView<float> gate, up;
  MatrixView<float> out;
  TINYLORA_HOST_DEVICE void operator()(Index e) const {
    Index const t = e / out.cols, j = e % out.cols;
    float const g = gate(t, j);
    out(t, j) = g / (1.0f + expf(-g)) * up(t, j);
  }
};

template <class W>
struct AddBias {
  MatrixView<float> y;
  W const* bias;
  TINYLORA_HOST_DEVICE void operator()(Index e) const {
    Index const t = e / y.cols, j = e % y.cols;
    y(t, j) += static_cast<float>(bias[j]);
  }
};

/// x(i, j) = x(i, j) / by (the host decoder's `logits /= temperature`, same rounding).
struct Divide {
  MatrixView<float> x;
  float by;
  TINYLORA_HOST_DEVICE void operator()(Index e) const { x(e / x.cols, e % x.cols) /= by; }
};

/// dst(i, :) = src(rows[i], :), or with `scatter` dst(rows[i], :) (+)= src(i, :). Rows are distinct
/// when scattering, so no two calls write one element.
struct MoveRows {
  ConstMatrixView<float> src;
  Index const* rows;
  MatrixView<float> dst;
  bool scatter, accumulate;
  TINYLORA_HOST_DEVICE void operator()(Index e) const {
    Index const i = e / src.cols, j = e % src.cols;
    if (!scatter) {
      dst(i, j) = src(rows[i], j);
    } else if (accumulate) {
      dst(rows[i], j) += src(i, j);
    } else {
      dst(rows[i], j) = src(i, j);
    }
  }
};

/// The sequence s with offsets[s] <= t < offsets[s + 1] (binary search).   offsets: (n_seq + 1)
TINYLORA_HOST_DEVICE inline Index sequence_of(Index const* offsets, Index n_seq, Index t) {
  Index lo = 0, hi = n_seq;
  while (hi - lo > 1) {
    Index const mid = (lo + hi) / 2;
    if (offsets[mid] <= t) lo = mid;
    else hi = mid;
  }
  return lo;
}

/// a . b in float, j in order.   a, b: (n)
TINYLORA_HOST_DEVICE inline float dot(float const* a, float const* b, Index n) {
  float acc = 0.0f;
  for (Index j = 0; j < n; ++j) acc += a[j] * b[j];
  return acc;
}

/// out[t, h] = sum_u softmax_u(q[t,h] . k[base+u, g] scale) v[base+u, g] over u in [0, len), with
/// an online softmax (running maximum and sum, the output rescaled as the maximum grows), so no
/// score array is needed.   q, out: row t; k, v: rows base .. base + len - 1
TINYLORA_HOST_DEVICE inline void attend(ConstMatrixView<float> q, Index t, int h, ConstMatrixView<float> k,
                                        ConstMatrixView<float> v, Index base, Index len, int g, Index head_dim, float scale,
                                        MatrixView<float> out) {
  float const* qh = q.data + t * q.ld + h * head_dim;
  float* oh = out.data + t * out.ld + h * head_dim;
  for (Index j = 0; j < head_dim; ++j) oh[j] = 0.0f;
  float running_max = -INFINITY, running_sum = 0.0f;
  for (Index u = 0; u < len; ++u) {
    float const* ku = k.data + (base + u) * k.ld + g * head_dim;
    float const* vu = v.data + (base + u) * v.ld + g * head_dim;
    float const s = dot(qh, ku, head_dim) * scale;
    float const new_max = s > running_max ? s : running_max;
    float const rescale = expf(running_max - new_max), w = expf(s - new_max);
    running_sum = running_sum * rescale + w;
    for (Index j = 0; j < head_dim; ++j) oh[j] = oh[j] * rescale + w * vu[j];
    running_max = new_max;
  }
  float const inv = 1.0f / running_sum;
  for (Index j = 0; j < head_dim; ++j) oh[j] *= inv;
}

struct CausalAttention {
  ConstMatrixView<float> q, k, v;
  Index const* offsets;  // (n_seq + 1)
  Index n_seq;
  int n_heads, group;
  Index head_dim;
  float scale;
  MatrixView<float> out;
  TINYLORA_HOST_DEVICE void operator()(Index e) const {
    Index const t = e / n_heads;
    int const h = static_cast<int>(e % n_heads);
    Index const begin = offsets[sequence_of(offsets, n_seq, t)];
    attend(q, t, h, k, v, begin, t - begin + 1, h / group, head_dim, scale, out);
  }
};

struct DecodeAttention {
  ConstMatrixView<float> q, cache_k, cache_v;
  Index capacity;
  Index const* cache_len;  // (n)
  Index const* slots;      // (n)
  int n_heads, group;
  Index head_dim;
  float scale;
  MatrixView<float> out;
  TINYLORA_HOST_DEVICE void operator()(Index e) const {
    Index const s = e / n_heads;
    int const h = static_cast<int>(e % n_heads);
    attend(q, s, h, cache_k, cache_v, slots[s] * capacity, cache_len[s], h / group, head_dim, scale, out);
  }
};

struct CrossEntropyRow {
  ConstMatrixView<float> logits;
  std::int32_t const* targets;
  double* nll;
  TINYLORA_HOST_DEVICE void operator()(Index t) const {
    float m = logits(t, 0);
    for (Index j = 1; j < logits.cols; ++j) m = logits(t, j) > m ? logits(t, j) : m;
    double sum = 0;
    for (Index j = 0; j < logits.cols; ++j) sum += exp(static_cast<double>(logits(t, j)) - m);
    nll[t] = m + log(sum) - logits(t, targets[t]);
  }
};

}  // namespace detail

/// out[t, :] = table[ids[t], :]. Ids must be in [0, V): the caller checks them on the host, where
/// they come from.   table: (V, d), ids: (n) device, out: (n, d)
template <class W>
void embedding_forward(ConstMatrixView<W> table, std::int32_t const* ids, MatrixView<float> out) {
  for_each_index(out.size(), detail::EmbeddingGather<W>{table, ids, out});
}

/// y = x / sqrt(mean(x^2) + eps) * weight, per row.   x, y: (n, d), weight: (d), rstd: (n) or null
template <class W>
void rmsnorm_forward(ConstMatrixView<float> x, W const* weight, float eps, MatrixView<float> y, float* rstd = nullptr) {
  TINYLORA_CHECK(x.rows == y.rows && x.cols == y.cols, "cuda::rmsnorm_forward(): x is ", x.rows, "x", x.cols, ", y is ",
                 y.rows, "x", y.cols);
  for_each_index(x.rows, detail::RmsNormRow<W>{x, weight, eps, y, rstd});
}

/// Rotary position embedding, rotate-half layout, in place.   x: (n, n_heads hd), positions: (n) device
inline void rope_forward(MatrixView<float> x, std::int32_t const* positions, int n_heads, Index head_dim, float theta,
                         bool inverse = false) {
  TINYLORA_CHECK(head_dim % 2 == 0 && x.cols >= n_heads * head_dim, "cuda::rope_forward(): head_dim ", head_dim,
                 " must be even and n_heads * head_dim <= ", x.cols);
  for_each_index(x.rows * (head_dim / 2), detail::RopePair{x, positions, n_heads, head_dim, theta, inverse});
}

/// Causal grouped-query attention over packed sequences.   q, out: (n, H hd), k, v: (n, H_kv hd),
/// offsets: (n_seq + 1) device
inline void attention_forward(ConstMatrixView<float> q, ConstMatrixView<float> k, ConstMatrixView<float> v,
                              Index const* offsets, Index n_seq, int n_heads, int n_kv_heads, Index head_dim,
                              MatrixView<float> out) {
  TINYLORA_CHECK(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "cuda::attention_forward(): ", n_heads,
                 " query heads do not split into ", n_kv_heads, " key/value heads");
  if (n_seq == 0) return;
  float const scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  for_each_index(q.rows * n_heads,
                 detail::CausalAttention{q, k, v, offsets, n_seq, n_heads, n_heads / n_kv_heads, head_dim, scale, out});
}

/// One new query row per sequence against the key/value cache.   q, out: (n, H hd); slot s's keys
/// and values: rows [slots[i] capacity, + cache_len[i]) of cache_k, cache_v; cache_len, slots: (n) device
inline void attention_decode(ConstMatrixView<float> q, ConstMatrixView<float> cache_k, ConstMatrixView<float> cache_v,
                             Index capacity, Index const* cache_len, Index const* slots, int n_heads, int n_kv_heads,
                             Index head_dim, MatrixView<float> out) {
  TINYLORA_CHECK(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "cuda::attention_decode(): ", n_heads,
                 " query heads do not split into ", n_kv_heads, " key/value heads");
  float const scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  for_each_index(q.rows * n_heads, detail::DecodeAttention{q, cache_k, cache_v, capacity, cache_len, slots, n_heads,
                                                           n_heads / n_kv_heads, head_dim, scale, out});
}

/// out = silu(gate) * up.   gate, up, out: (n, f)
inline void swiglu_forward(ConstMatrixView<float> gate, ConstMatrixView<float> up, MatrixView<float> out) {
  for_each_index(out.size(), detail::SwiGlu{gate, up, out});
}

/// y[t, :] += bias.   y: (n, m), bias: (m) device
template <class W>
void add_bias(MatrixView<float> y, W const* bias) {
  for_each_index(y.size(), detail::AddBias<W>{y, bias});
}

/// nll[t] = logsumexp(logits[t, :]) - logits[t, targets[t]], in double.   logits: (m, V),
/// targets: (m) device, nll: (m) device
inline void cross_entropy_forward(ConstMatrixView<float> logits, std::int32_t const* targets, double* nll) {
  for_each_index(logits.rows, detail::CrossEntropyRow{logits, targets, nll});
}

/// x /= by, element by element (logits / T).   x: (m, V)
inline void divide(MatrixView<float> x, float by) { for_each_index(x.size(), detail::Divide{x, by}); }

/// dst[i, :] = src[rows[i], :].   src: (n, d), rows: (m) device, dst: (m, d)
inline void gather_rows(ConstMatrixView<float> src, Index const* rows, MatrixView<float> dst) {
  TINYLORA_CHECK(src.cols == dst.cols, "cuda::gather_rows(): ", src.cols, " columns into ", dst.cols);
  // the functor walks (i, j) over src's shape: give it dst's row count
  for_each_index(dst.size(), detail::MoveRows{ConstMatrixView<float>{src.data, dst.rows, src.cols, src.ld}, rows, dst, false, false});
}

/// dst[rows[i], :] = src[i, :], or += with `accumulate`; rows distinct.   src: (m, d), rows: (m) device, dst: (n, d)
inline void scatter_rows(ConstMatrixView<float> src, Index const* rows, MatrixView<float> dst, bool accumulate = false) {
  TINYLORA_CHECK(src.cols == dst.cols, "cuda::scatter_rows(): ", src.cols, " columns into ", dst.cols);
  for_each_index(src.size(), detail::MoveRows{src, rows, dst, true, accumulate});
}

}  // namespace tinylora::backend::cuda
