// tinylora/backend/cuda/kernels_backward.cuh: the decoder's backward operations for backend::Cuda,
// each the counterpart of the function of the same name in backend/cpu/kernels_backward.hpp (same
// semantics: which outputs are accumulated and which overwritten), as Thrust functors. Plain
// versions, like kernels.cuh: the attention backward recomputes the probabilities per (query, head)
// from a saved log-sum-exp instead of holding (len, len) blocks.
#pragma once

#include "tinylora/backend/cuda/kernels.cuh"

namespace tinylora::backend::cuda {

namespace detail {

template <class W>
struct RmsNormBackwardRow {
  ConstMatrixView<float> x;
  W const* weight;
  float const* rstd;
  ConstMatrixView<float> dy;
  MatrixView<float> dx;
  TINYLORA_HOST_DEVICE void operator()(Index t) const {
    float const r = rstd[t];
    double dot = 0;  // sum_j dy_j w_j x_j
    for (Index j = 0; j < x.cols; ++j) dot += static_cast<double>(dy(t, j)) * static_cast<float>(weight[j]) * x(t, j);
    float const c = static_cast<float>(static_cast<double>(r) * r * r * dot / static_cast<double>(x.cols));
    for (Index j = 0; j < x.cols; ++j) dx(t, j) += r * static_cast<float>(weight[j]) * dy(t, j) - c * x(t, j);
  }
};

struct SwiGluBackward {
  ConstMatrixView<float> gate, up, dout;
  MatrixView<float> dgate, dup;
  TINYLORA_HOST_DEVICE void operator()(Index e) const {
    Index const t = e / gate.cols, j = e % gate.cols;
    float const g = gate(t, j), u = up(t, j), dy = dout(t, j);
    float const s = 1.0f / (1.0f + expf(-g));
    dgate(t, j) = dy * u * s * (1.0f + g * (1.0f - s));
    dup(t, j) = dy * g * s;
  }
};

struct CrossEntropyBackwardRow {
  ConstMatrixView<float> z;
  std::int32_t const* targets;
  float scale;
  float const* weights;  // (m) or null
  MatrixView<float> dlogits;
  TINYLORA_HOST_DEVICE void operator()(Index t) const {
    float m = z(t, 0);
    for (Index j = 1; j < z.cols; ++j) m = z(t, j) > m ? z(t, j) : m;
    double sum = 0;
    for (Index j = 0; j < z.cols; ++j) sum += exp(static_cast<double>(z(t, j)) - m);
    float const lse = static_cast<float>(m + log(sum));
    float const a = scale * (weights != nullptr ? weights[t] : 1.0f);
    for (Index j = 0; j < z.cols; ++j) dlogits(t, j) = a * expf(z(t, j) - lse);
    dlogits(t, targets[t]) -= a;
  }
};

/// Per (query t, head h), with P_u = softmax_u(S[t, :]) over the keys u <= t of t's sequence:
///   lse = logsumexp_u S[t, u],  D = sum_u P_u (dO[t] . v[u]),
///   dq[t, h] = scale sum_u P_u (dO[t] . v[u] - D) k[u].   (dS[t, u] = P_u (dP[t, u] - D))
struct AttentionBackwardQuery {
  ConstMatrixView<float> q, k, v, dout;
  Index const* offsets;
  Index n_seq;
  int n_heads, group;
  Index head_dim;
  float scale;
  MatrixView<float> dq;
  float* lse;    // (n, H)
  float* delta;  // (n, H) D
  TINYLORA_HOST_DEVICE void operator()(Index e) const {
    Index const t = e / n_heads;
    int const h = static_cast<int>(e % n_heads), g = h / group;
    Index const begin = offsets[sequence_of(offsets, n_seq, t)];
    float const* qh = q.data + t * q.ld + h * head_dim;
    float const* doh = dout.data + t * dout.ld + h * head_dim;
    auto const key = [&](Index u) { return k.data + u * k.ld + g * head_dim; };
    auto const value = [&](Index u) { return v.data + u * v.ld + g * head_dim; };
    float m = -INFINITY;
    for (Index u = begin; u <= t; ++u) {
      float const s = dot(qh, key(u), head_dim) * scale;
      m = s > m ? s : m;
    }
    double sum = 0;
    for (Index u = begin; u <= t; ++u) sum += exp(static_cast<double>(dot(qh, key(u), head_dim) * scale - m));
    float const l = static_cast<float>(m + log(sum));
    float D = 0.0f;
    for (Index u = begin; u <= t; ++u) D += expf(dot(qh, key(u), head_dim) * scale - l) * dot(doh, value(u), head_dim);
    float* dqh = dq.data + t * dq.ld + h * head_dim;
    for (Index j = 0; j < head_dim; ++j) dqh[j] = 0.0f;
    for (Index u = begin; u <= t; ++u) {
      float const p = expf(dot(qh, key(u), head_dim) * scale - l);
      float const ds = p * (dot(doh, value(u), head_dim) - D) * scale;
      float const* ku = key(u);
      for (Index j = 0; j < head_dim; ++j) dqh[j] += ds * ku[j];
    }
    lse[e] = l;
    delta[e] = D;
  }
};

/// Per (key u, kv head g): the sums over the queries t >= u of u's sequence and the query heads h
/// of group g:  dv[u, g] = sum P_tu dO[t, h],  dk[u, g] = scale sum dS_tu q[t, h].
struct AttentionBackwardKey {
  ConstMatrixView<float> q, k, v, dout;
  Index const* offsets;
  Index n_seq;
  int n_heads, n_kv_heads, group;
  Index head_dim;
  float scale;
  float const* lse;    // (n, H)
  float const* delta;  // (n, H)
  MatrixView<float> dk, dv;
  TINYLORA_HOST_DEVICE void operator()(Index e) const {
    Index const u = e / n_kv_heads;
    int const g = static_cast<int>(e % n_kv_heads);
    Index const end = offsets[sequence_of(offsets, n_seq, u) + 1];
    float const* ku = k.data + u * k.ld + g * head_dim;
    float const* vu = v.data + u * v.ld + g * head_dim;
    float* dku = dk.data + u * dk.ld + g * head_dim;
    float* dvu = dv.data + u * dv.ld + g * head_dim;
    for (Index j = 0; j < head_dim; ++j) dku[j] = dvu[j] = 0.0f;
    for (Index t = u; t < end; ++t)
      for (int h = g * group; h < (g + 1) * group; ++h) {
        float const* qh = q.data + t * q.ld + h * head_dim;
        float const* doh = dout.data + t * dout.ld + h * head_dim;
        Index const th = t * n_heads + h;
        float const p = expf(dot(qh, ku, head_dim) * scale - lse[th]);
        float const ds = p * (dot(doh, vu, head_dim) - delta[th]) * scale;
        for (Index j = 0; j < head_dim; ++j) {
          dvu[j] += p * doh[j];
          dku[j] += ds * qh[j];
        }
      }
  }
};

}  // namespace detail

/// dx += d RMSNorm / dx applied to dy (frozen weight).   x, dy, dx: (n, d), weight: (d), rstd: (n) device
template <class W>
void rmsnorm_backward(ConstMatrixView<float> x, W const* weight, float const* rstd, ConstMatrixView<float> dy,
                      MatrixView<float> dx) {
  TINYLORA_CHECK(dy.rows == x.rows && dy.cols == x.cols && dx.rows == x.rows && dx.cols == x.cols,
                 "cuda::rmsnorm_backward(): shape mismatch (x is ", x.rows, "x", x.cols, ", dy is ", dy.rows, "x", dy.cols,
                 ", dx is ", dx.rows, "x", dx.cols, ")");
  for_each_index(x.rows, detail::RmsNormBackwardRow<W>{x, weight, rstd, dy, dx});
}

/// RoPE's transpose: the rotation by the negative angle, in place.   dx: (n, n_heads hd), positions: (n) device
inline void rope_backward(MatrixView<float> dx, std::int32_t const* positions, int n_heads, Index head_dim, float theta) {
  rope_forward(dx, positions, n_heads, head_dim, theta, /*inverse=*/true);
}

/// OVERWRITES dgate and dup.   gate, up, dout, dgate, dup: (n, f)
inline void swiglu_backward(ConstMatrixView<float> gate, ConstMatrixView<float> up, ConstMatrixView<float> dout,
                            MatrixView<float> dgate, MatrixView<float> dup) {
  for_each_index(gate.size(), detail::SwiGluBackward{gate, up, dout, dgate, dup});
}

/// dlogits[t, :] = scale w_t (softmax(z_t) - onehot(targets[t])); may share storage with z.
/// OVERWRITES dlogits.   z, dlogits: (m, V), targets: (m) device, weights: (m) device or null
inline void cross_entropy_backward(ConstMatrixView<float> z, std::int32_t const* targets, float scale,
                                   MatrixView<float> dlogits, float const* weights = nullptr) {
  for_each_index(z.rows, detail::CrossEntropyBackwardRow{z, targets, scale, weights, dlogits});
}

/// Backward of attention_forward. OVERWRITES dq, dk, dv on the rows of the sequences.
///   q, dout, dq: (n, H hd), k, v, dk, dv: (n, H_kv hd), offsets: (n_seq + 1) device
inline void attention_backward(ConstMatrixView<float> q, ConstMatrixView<float> k, ConstMatrixView<float> v,
                               Index const* offsets, Index n_seq, int n_heads, int n_kv_heads, Index head_dim,
                               ConstMatrixView<float> dout, MatrixView<float> dq, MatrixView<float> dk, MatrixView<float> dv) {
  TINYLORA_CHECK(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "cuda::attention_backward(): ", n_heads,
                 " query heads do not split into ", n_kv_heads, " key/value heads");
  if (n_seq == 0 || q.rows == 0) return;
  int const group = n_heads / n_kv_heads;
  float const scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  cuda::Buffer<float> lse(static_cast<std::size_t>(q.rows * n_heads)), delta(lse.size());
  for_each_index(q.rows * n_heads, detail::AttentionBackwardQuery{q, k, v, dout, offsets, n_seq, n_heads, group, head_dim,
                                                                  scale, dq, cuda::data(lse), cuda::data(delta)});
  for_each_index(q.rows * n_kv_heads,
                 detail::AttentionBackwardKey{q, k, v, dout, offsets, n_seq, n_heads, n_kv_heads, group, head_dim, scale,
                                              cuda::data(lse), cuda::data(delta), dk, dv});
}

}  // namespace tinylora::backend::cuda
