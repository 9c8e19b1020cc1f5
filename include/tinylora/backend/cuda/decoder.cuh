// tinylora/backend/cuda/decoder.cuh: model::Decoder on backend::Cuda. The same model and the same
// interface as model/decoder.hpp's Decoder<B, P> (load, loss, loss_and_backward, token_logprobs,
// objective_and_backward, logits, prefill, decode_step), so AdaptedModel, the trainers and
// generate() take it unchanged: a recipe switches by its backend line alone.
//
// Why a specialization rather than one decoder for both: the host decoder cuts a batch into one part
// per thread and decodes through panel-packed weights (backend/cpu/packed_gemm.hpp); here every
// operation covers the whole batch at once on one stream, every activation is a Cuda::Buffer, and
// only index arrays go up and losses, log-probs or sampled tokens come back. The block reads line for
// line as the host one:
//   x = E[ids]
//   for each block:  h = RMSNorm(x);  q, k, v = h W_q^T, h W_k^T, h W_v^T (+ biases, + adapters)
//                    q, k = RoPE(q), RoPE(k);  x += Attention(q, k, v) W_o^T
//                    h = RMSNorm(x);  x += (silu(h W_gate^T) * (h W_up^T)) W_down^T
//   logits = RMSNorm(x) E_head^T  -- only at rows where a logit or a loss is needed.
// Activation policy of the backward: "recompute per layer", as on the host.
#pragma once

#include <thrust/copy.h>

#include <filesystem>
#include <span>
#include <vector>

#include "tinylora/backend/cuda/kernels_backward.cuh"
#include "tinylora/backend/cuda/sampling.cuh"
#include "tinylora/model/generate.hpp"

namespace tinylora::model {

/// A dense row-major float matrix in backend::Cuda's memory (zero on creation).
struct DeviceMatrix {
  backend::Cuda::Buffer<float> data;  // (rows cols)
  Index rows = 0, cols = 0;

  DeviceMatrix() = default;
  DeviceMatrix(Index r, Index c) : data(backend::Cuda::zeros<float>(r * c)), rows(r), cols(c) {}
  MatrixView<float> view() { return {backend::Cuda::data(data), rows, cols}; }
  ConstMatrixView<float> view() const { return {backend::Cuda::data(data), rows, cols}; }

  HostMatrix download() const {
    HostMatrix out(rows, cols);
    thrust::copy(data.begin(), data.end(), out.data());
    return out;
  }
};

/// Keys (after RoPE) and values of every layer in device memory; slot s holds one sequence's rows
/// [s capacity, s capacity + length[s]). The lengths stay on the host, which schedules the steps.
struct DeviceKvCache {
  Index capacity = 0;
  std::vector<DeviceMatrix> k, v;  // per layer: (n_slots capacity, H_kv hd)
  std::vector<Index> length;       // (n_slots)

  DeviceKvCache(int n_layers, Index n_slots, Index capacity_, Index kv_dim)
      : capacity(capacity_), length(static_cast<std::size_t>(n_slots), 0) {
    for (int l = 0; l < n_layers; ++l) {
      k.emplace_back(n_slots * capacity, kv_dim);
      v.emplace_back(n_slots * capacity, kv_dim);
    }
  }
  Index n_slots() const { return static_cast<Index>(length.size()); }
  /// Slot `to` becomes a copy of slot `from` (a shared prompt prefix encoded once), on the device.
  void copy_slot(Index from, Index to) {
    Index const n = length[static_cast<std::size_t>(from)];
    for (std::size_t l = 0; l < k.size(); ++l)
      for (DeviceMatrix* m : {&k[l], &v[l]}) {
        float* base = backend::Cuda::data(m->data);
        thrust::copy_n(thrust::device, base + from * capacity * m->cols, n * m->cols, base + to * capacity * m->cols);
      }
    length[static_cast<std::size_t>(to)] = n;
  }
};

template <class P>
class Decoder<backend::Cuda, P> {
 public:
  using B = backend::Cuda;
  using W = typename P::weight_type;
  using Cache = DeviceKvCache;

  Decoder(ModelConfig config, ModelWeights<B, P> weights) : config_(std::move(config)), w_(std::move(weights)) {}
  explicit Decoder(std::pair<ModelConfig, ModelWeights<B, P>> loaded) : Decoder(std::move(loaded.first), std::move(loaded.second)) {}

  static Decoder load_gguf(std::filesystem::path const& path) { return Decoder((require_device(), load_model_gguf<B, P>(path))); }
  static Decoder load_hf(std::filesystem::path const& dir) { return Decoder((require_device(), load_model_hf<B, P>(dir))); }
  static Decoder load(std::filesystem::path const& path) {
    return std::filesystem::is_directory(path) ? load_hf(path) : load_gguf(path);
  }

  ModelConfig const& config() const { return config_; }
  ModelWeights<B, P> const& weights() const { return w_; }
  ModelWeights<B, P>& weights() { return w_; }
  void set_adapters(LinearAdapters* adapters) { adapters_ = adapters; }
  LinearAdapters* adapters() const { return adapters_; }
  HostMatrix weight_matrix(int layer, Proj p) const { return weight_matrix_of(w_, layer, p); }

  /// The final hidden states RMSNorm(x) of every token, copied to the host.   returns (n, d)
  /// With a cache, sequence s's keys and values are also stored in slot slots[s] (prefill).
  HostMatrix hidden_states(PackedBatch const& batch, DeviceKvCache* cache = nullptr, std::span<Index const> slots = {}) const {
    return hidden(batch, cache, slots).download();
  }

  /// Logits at the given rows of the packed batch.   returns (rows.size(), V)
  HostMatrix logits(PackedBatch const& batch, std::span<Index const> rows) const {
    return head_forward(hidden(batch), rows).download();
  }
  HostMatrix logits(PackedBatch const& batch) const {
    std::vector<Index> rows(static_cast<std::size_t>(batch.n_tokens()));
    std::iota(rows.begin(), rows.end(), Index{0});
    return logits(batch, rows);
  }

  /// Encodes prompts into cache slots slots[s]; the logits at each one's last token.   returns (n_seq, V)
  HostMatrix prefill(PackedBatch const& batch, DeviceKvCache& cache, std::span<Index const> slots) const {
    return head_forward(hidden(batch, &cache, slots), last_rows(batch)).download();
  }

  /// Masked next-token cross-entropy (Decoder<Cpu>::loss): the LM head runs at the supervised rows
  /// only, `chunk` rows at a time; each row's NLL comes back in double.
  LossResult loss(PackedBatch const& batch, std::span<std::uint8_t const> supervised, Index chunk = 256) const {
    auto const [rows, targets] = supervised_targets(batch, supervised, "Decoder<Cuda>::loss()");
    LossResult out;
    if (rows.empty()) return out;
    DeviceMatrix const h = hidden(batch);
    for_each_chunk(rows, targets, chunk, [&](std::span<Index const> part, Targets const& t) {
      DeviceMatrix const logits = head_forward(h, part);  // (count, V)
      for (double x : nll(logits, t)) out.sum_nll += x;
    });
    out.n_tokens = static_cast<Index>(rows.size());
    return out;
  }

  /// The masked loss and its backward pass into the adapters (Decoder<Cpu>::loss_and_backward).
  LossResult loss_and_backward(PackedBatch const& batch, std::span<std::uint8_t const> supervised, Index chunk = 256,
                               Index normalizer = 0) const {
    auto const [rows, targets] = supervised_targets(batch, supervised, "Decoder<Cuda>::loss_and_backward()");
    LossResult out;
    if (rows.empty()) return out;
    Activations const a = forward_keeping_inputs(batch);
    DeviceMatrix dy(batch.n_tokens(), config_.hidden);  // (n, d)
    float const scale = 1.0f / static_cast<float>(normalizer > 0 ? normalizer : static_cast<Index>(rows.size()));
    for_each_chunk(rows, targets, chunk, [&](std::span<Index const> part, Targets const& t) {
      DeviceMatrix logits = head_forward(a.y, part);  // (count, V)
      for (double x : nll(logits, t)) out.sum_nll += x;
      backend::cuda::cross_entropy_backward(logits.view(), B::data(t.device), scale, logits.view());
      head_backward_rows(logits, part, dy);
    });
    out.n_tokens = static_cast<Index>(rows.size());
    backward_from(batch, a, dy);
    return out;
  }

  /// log softmax(z_{t-1} / T)[ids[t]] at every supervised t (Decoder<Cpu>::token_logprobs).   returns (m)
  std::vector<float> token_logprobs(PackedBatch const& batch, std::span<std::uint8_t const> supervised, float temperature = 1.0f,
                                    Index chunk = 256) const {
    auto const [rows, targets] = supervised_targets(batch, supervised, "Decoder<Cuda>::token_logprobs()");
    if (rows.empty()) return {};
    return logprobs_at(hidden(batch), rows, targets, temperature, chunk);
  }

  /// The backward pass of an objective of the supervised tokens' log-probs (Decoder<Cpu>::
  /// objective_and_backward): the log-probs come back, the objective runs on the host, its
  /// derivatives go up as the cross-entropy's row weights.
  template <class Objective>
  std::vector<float> objective_and_backward(PackedBatch const& batch, std::span<std::uint8_t const> supervised, float temperature,
                                            Objective&& objective, Index chunk = 256) const {
    auto const [rows, targets] = supervised_targets(batch, supervised, "Decoder<Cuda>::objective_and_backward()");
    if (rows.empty()) return {};
    Activations const a = forward_keeping_inputs(batch);
    std::vector<float> const logp = logprobs_at(a.y, rows, targets, temperature, chunk);  // (m)
    std::vector<float> const dlogp = objective(std::span<float const>(logp));             // (m)
    TINYLORA_CHECK(dlogp.size() == logp.size(), "Decoder<Cuda>::objective_and_backward(): the objective returned ", dlogp.size(),
                   " derivatives for ", logp.size(), " log-probs");
    std::vector<float> weights(dlogp.size());  // -dJ/dlogp
    for (std::size_t i = 0; i < dlogp.size(); ++i) weights[i] = -dlogp[i];
    DeviceMatrix dy(batch.n_tokens(), config_.hidden);  // (n, d)
    std::size_t first = 0;
    for_each_chunk(rows, targets, chunk, [&](std::span<Index const> part, Targets const& t) {
      DeviceMatrix logits = head_forward(a.y, part);  // (count, V)
      if (temperature != 1.0f) backend::cuda::divide(logits.view(), temperature);
      auto const w = B::upload(std::span<float const>(weights).subspan(first, part.size()));
      backend::cuda::cross_entropy_backward(logits.view(), B::data(t.device), 1.0f / temperature, logits.view(), B::data(w));
      head_backward_rows(logits, part, dy);
      first += part.size();
    });
    backward_from(batch, a, dy);
    return logp;
  }

  /// One new token per active sequence (Decoder<Cpu>::decode_step), logits copied to the host.   returns (n_active, V)
  HostMatrix decode_step(std::span<std::int32_t const> tokens, std::span<Index const> slots, DeviceKvCache& cache) const {
    return decode_logits(tokens, slots, cache).download();
  }

  /// decode_step() and one token drawn per row on the device (cuda::sample_tokens draws what
  /// sample_token draws from the same logits): only the tokens and their log-probs come back.
  std::vector<Sampled> decode_sample(std::span<std::int32_t const> tokens, std::span<Index const> slots, DeviceKvCache& cache,
                                     SamplingOptions const& o, std::uint64_t step) const {
    DeviceMatrix const logits = decode_logits(tokens, slots, cache);  // (n, V)
    Index const n = logits.rows;
    std::vector<std::uint64_t> const sequence(slots.begin(), slots.end());
    auto const dev_sequence = B::upload(std::span<std::uint64_t const>(sequence));
    auto token = B::zeros<std::int32_t>(n);
    auto logprob = B::zeros<float>(n), policy = B::zeros<float>(n);
    backend::cuda::sample_tokens(logits.view(), o, B::data(dev_sequence), step, B::data(token), B::data(logprob), B::data(policy));
    auto const t = B::download(token);
    auto const lp = B::download(logprob), pl = B::download(policy);
    std::vector<Sampled> out(static_cast<std::size_t>(n));
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = {t[i], lp[i], pl[i]};
    return out;
  }

 private:
  static void require_device() {
    TINYLORA_CHECK(B::available(), "Decoder<Cuda>: no GPU is visible to this process. Hint: check nvidia-smi and "
                   "CUDA_VISIBLE_DEVICES, or build with the release preset, whose experiments run on backend::Cpu.");
  }

  /// A chunk's targets on the device.
  struct Targets {
    B::Buffer<std::int32_t> device;  // (count)
    Index count;
  };

  /// f(rows part, its targets) over consecutive chunks of at most `chunk` rows.
  template <class F>
  static void for_each_chunk(std::vector<Index> const& rows, std::vector<std::int32_t> const& targets, Index chunk, F&& f) {
    for (std::size_t first = 0; first < rows.size(); first += static_cast<std::size_t>(chunk)) {
      std::size_t const count = std::min(rows.size() - first, static_cast<std::size_t>(chunk));
      Targets const t{B::upload(std::span<std::int32_t const>(targets).subspan(first, count)), static_cast<Index>(count)};
      f(std::span<Index const>(rows).subspan(first, count), t);
    }
  }

  /// -log softmax(logits)[targets] per row, brought back in double.   logits: (count, V), returns (count)
  static std::vector<double> nll(DeviceMatrix const& logits, Targets const& t) {
    auto out = B::zeros<double>(t.count);
    backend::cuda::cross_entropy_forward(logits.view(), B::data(t.device), B::data(out));
    return B::download(out);
  }

  /// A packed batch's index arrays in device memory; token ids checked on the host first.
  struct DeviceBatch {
    B::Buffer<std::int32_t> ids, positions;  // (n)
    B::Buffer<Index> offsets;                // (n_seq + 1)
    Index n = 0, n_seq = 0;
  };
  DeviceBatch upload(PackedBatch const& batch) const {
    check_ids(batch.ids);
    return {B::upload(std::span<std::int32_t const>(batch.ids)), B::upload(std::span<std::int32_t const>(batch.positions)),
            B::upload(std::span<Index const>(batch.offsets)), batch.n_tokens(), batch.n_seq()};
  }
  void check_ids(std::span<std::int32_t const> ids) const {
    for (std::int32_t id : ids)
      TINYLORA_CHECK(id >= 0 && id < config_.vocab, "embedding_forward(): token id ", id, " is outside the vocabulary [0, ",
                     config_.vocab, ")");
  }

  /// x = E[ids].   returns (n, d)
  DeviceMatrix embed(B::Buffer<std::int32_t> const& ids, Index n) const {
    DeviceMatrix x(n, config_.hidden);
    backend::cuda::embedding_forward(w_.embed.view(), B::data(ids), x.view());
    return x;
  }

  /// RMSNorm(x) with weight g.   returns (n, d); rstd: (n) or null
  DeviceMatrix rmsnorm(DeviceMatrix const& x, B::Buffer<W> const& g, float* rstd = nullptr) const {
    DeviceMatrix y(x.rows, x.cols);
    backend::cuda::rmsnorm_forward(x.view(), B::data(g), config_.rms_eps, y.view(), rstd);
    return y;
  }

  /// Y = X W^T (+ bias) (+ the adapter's X Delta W^T).   X: (n, d_in), returns (n, d_out)
  DeviceMatrix linear(int layer, Proj p, DeviceMatrix const& X) const {
    auto const& L = w_.layers[static_cast<std::size_t>(layer)];
    auto const& m = L.proj[static_cast<int>(p)];
    int const pi = static_cast<int>(p);
    DeviceMatrix Y(X.rows, m.rows);
    B::gemm(Op::N, Op::T, 1.0f, X.view(), m.view(), 0.0f, Y.view());
    if (config_.qkv_bias && pi < 3) backend::cuda::add_bias(Y.view(), B::data(L.qkv_bias[static_cast<std::size_t>(pi)]));
    if (adapters_ != nullptr) adapters_->apply(layer, p, X.view(), Y.view());
    return Y;
  }

  /// dX += dY W (frozen W) and the adapter's part.   dY: (n, d_out), dX: (n, d_in)
  void linear_backward(int layer, Proj p, DeviceMatrix const& X, DeviceMatrix const& dY, DeviceMatrix& dX) const {
    auto const& m = w_.layers[static_cast<std::size_t>(layer)].proj[static_cast<int>(p)];
    B::gemm(Op::N, Op::N, 1.0f, dY.view(), m.view(), 1.0f, dX.view());
    if (adapters_ != nullptr) adapters_->backward(layer, p, X.view(), dY.view(), dX.view());
  }

  /// logits = h[rows] E_head^T.   h: (n, d), returns (rows, V)
  DeviceMatrix head_forward(DeviceMatrix const& h, std::span<Index const> rows) const {
    auto const dev_rows = B::upload(rows);
    DeviceMatrix sel(static_cast<Index>(rows.size()), h.cols);  // (rows, d)
    backend::cuda::gather_rows(h.view(), B::data(dev_rows), sel.view());
    return head_of(sel);
  }
  /// logits = y E_head^T.   y: (m, d), returns (m, V)
  DeviceMatrix head_of(DeviceMatrix const& y) const {
    DeviceMatrix logits(y.rows, config_.vocab);
    B::gemm(Op::N, Op::T, 1.0f, y.view(), w_.head(), 0.0f, logits.view());
    return logits;
  }

  /// dy[rows[i]] += dlogits[i] E_head.   dlogits: (rows, V), dy: (n, d)
  void head_backward_rows(DeviceMatrix const& dlogits, std::span<Index const> rows, DeviceMatrix& dy) const {
    DeviceMatrix dh(dlogits.rows, config_.hidden);  // (rows, d)
    B::gemm(Op::N, Op::N, 1.0f, dlogits.view(), w_.head(), 0.0f, dh.view());
    auto const dev_rows = B::upload(rows);
    backend::cuda::scatter_rows(dh.view(), B::data(dev_rows), dy.view(), /*accumulate=*/true);
  }

  /// log softmax(h[rows] E_head^T / T)[targets], chunk by chunk.   h: (n, d), returns (rows)
  std::vector<float> logprobs_at(DeviceMatrix const& h, std::vector<Index> const& rows, std::vector<std::int32_t> const& targets,
                                 float temperature, Index chunk) const {
    TINYLORA_CHECK(temperature > 0, "Decoder: the temperature must be > 0 (got ", temperature, ")");
    std::vector<float> out;
    out.reserve(rows.size());
    for_each_chunk(rows, targets, chunk, [&](std::span<Index const> part, Targets const& t) {
      DeviceMatrix logits = head_forward(h, part);  // (count, V)
      if (temperature != 1.0f) backend::cuda::divide(logits.view(), temperature);
      for (double x : nll(logits, t)) out.push_back(static_cast<float>(-x));
    });
    return out;
  }

  /// RMSNorm(x) after every block.   returns (n, d)
  DeviceMatrix hidden(PackedBatch const& batch, DeviceKvCache* cache = nullptr, std::span<Index const> slots = {}) const {
    DeviceBatch const db = upload(batch);
    DeviceMatrix x = embed(db.ids, db.n);  // (n, d) residual stream
    for (int l = 0; l < config_.n_layers; ++l) block_forward(l, batch, db, x, cache, slots);
    if (cache != nullptr)
      for (Index s = 0; s < batch.n_seq(); ++s)
        cache->length[static_cast<std::size_t>(slots[s])] = batch.offsets[s + 1] - batch.offsets[s];
    return rmsnorm(x, w_.final_norm);
  }

  /// The attention's inputs from the residual stream: q, k = RoPE(h W_q^T), RoPE(h W_k^T), v = h W_v^T
  /// with h = RMSNorm(x).   x: (n, d); q: (n, H hd), k, v: (n, H_kv hd); positions: (n) device
  struct Qkv {
    DeviceMatrix q, k, v;
  };
  Qkv attention_inputs(int l, DeviceMatrix const& x, std::int32_t const* positions) const {
    auto const& c = config_;
    DeviceMatrix const h = rmsnorm(x, w_.layers[static_cast<std::size_t>(l)].attn_norm);  // (n, d)
    Qkv out{linear(l, Proj::q, h), linear(l, Proj::k, h), linear(l, Proj::v, h)};
    backend::cuda::rope_forward(out.q.view(), positions, c.n_heads, c.head_dim, c.rope_theta);
    backend::cuda::rope_forward(out.k.view(), positions, c.n_kv_heads, c.head_dim, c.rope_theta);
    return out;
  }

  /// x += attn W_o^T, then x += (silu(h W_gate^T) * (h W_up^T)) W_down^T with h = RMSNorm(x): the
  /// rest of block l once the attention is done.   attn: (n, H hd), x: (n, d) in place
  void finish_block(int l, DeviceMatrix const& attn, DeviceMatrix& x) const {
    B::add(1.0f, linear(l, Proj::o, attn).view(), x.view());
    DeviceMatrix const h = rmsnorm(x, w_.layers[static_cast<std::size_t>(l)].mlp_norm);  // (n, d)
    DeviceMatrix gate = linear(l, Proj::gate, h);    // (n, f)
    DeviceMatrix const up = linear(l, Proj::up, h);  // (n, f)
    backend::cuda::swiglu_forward(gate.view(), up.view(), gate.view());
    B::add(1.0f, linear(l, Proj::down, gate).view(), x.view());
  }

  /// x += Attention(RoPE(q), RoPE(k), v) W_o^T;  x += SwiGLU(h) W_down^T.   x: (n, d) in place
  void block_forward(int l, PackedBatch const& batch, DeviceBatch const& db, DeviceMatrix& x, DeviceKvCache* cache,
                     std::span<Index const> slots) const {
    auto const& c = config_;
    Qkv const in = attention_inputs(l, x, B::data(db.positions));
    if (cache != nullptr)
      for (Index s = 0; s < batch.n_seq(); ++s) {
        Index const begin = batch.offsets[s], len = batch.offsets[s + 1] - begin;
        TINYLORA_CHECK(len <= cache->capacity, "Decoder::hidden_states(): a prompt of ", len,
                       " tokens does not fit the cache capacity ", cache->capacity);
        Index const base = slots[static_cast<std::size_t>(s)] * cache->capacity;
        auto store = [&](DeviceMatrix const& from, DeviceMatrix& to) {  // rows [begin, begin + len) -> [base, base + len)
          thrust::copy_n(thrust::device, B::data(from.data) + begin * from.cols, len * from.cols, B::data(to.data) + base * to.cols);
        };
        store(in.k, cache->k[static_cast<std::size_t>(l)]);
        store(in.v, cache->v[static_cast<std::size_t>(l)]);
      }
    DeviceMatrix attn(db.n, c.q_dim());  // (n, H hd)
    backend::cuda::attention_forward(in.q.view(), in.k.view(), in.v.view(), B::data(db.offsets), db.n_seq, c.n_heads, c.n_kv_heads,
                                     c.head_dim, attn.view());
    finish_block(l, attn, x);
  }

  /// What the backward needs from the forward under "recompute per layer".
  struct Activations {
    std::vector<DeviceMatrix> inputs;  // (n_layers) block inputs, (n, d) each
    DeviceMatrix x;                    // (n, d) the last block's output
    DeviceMatrix y;                    // (n, d) RMSNorm(x), the LM head's input
    B::Buffer<float> rstd;             // (n) the final norm's 1 / rms
  };

  Activations forward_keeping_inputs(PackedBatch const& batch) const {
    DeviceBatch const db = upload(batch);
    Activations a;
    a.x = embed(db.ids, db.n);
    for (int l = 0; l < config_.n_layers; ++l) {
      a.inputs.push_back(a.x);
      block_forward(l, batch, db, a.x, nullptr, {});
    }
    a.rstd = B::zeros<float>(db.n);
    a.y = rmsnorm(a.x, w_.final_norm, B::data(a.rstd));
    return a;
  }

  /// dy: dL/dy at the final norm's output (n, d) -> back through the norm and every block.
  void backward_from(PackedBatch const& batch, Activations const& a, DeviceMatrix const& dy) const {
    DeviceBatch const db = upload(batch);
    DeviceMatrix dx(db.n, config_.hidden);  // (n, d) dL/dx of the residual stream
    backend::cuda::rmsnorm_backward(a.x.view(), B::data(w_.final_norm), B::data(a.rstd), dy.view(), dx.view());
    for (int l = config_.n_layers - 1; l >= 0; --l) block_backward(l, db, a.inputs[static_cast<std::size_t>(l)], dx);
  }

  /// Recomputes block l from its input x and back-propagates dx (w.r.t. its output on entry, its
  /// input on return).   x, dx: (n, d)
  void block_backward(int l, DeviceBatch const& db, DeviceMatrix const& x, DeviceMatrix& dx) const {
    namespace k = backend::cuda;
    auto const& L = w_.layers[static_cast<std::size_t>(l)];
    auto const& c = config_;
    Index const n = db.n, d = c.hidden;
    std::int32_t const* positions = B::data(db.positions);
    // ---- forward, keeping what the backward needs
    auto rstd1 = B::zeros<float>(n), rstd2 = B::zeros<float>(n);
    DeviceMatrix const h = rmsnorm(x, L.attn_norm, B::data(rstd1));  // (n, d)
    DeviceMatrix q = linear(l, Proj::q, h), kk = linear(l, Proj::k, h);  // (n, H hd), (n, H_kv hd)
    DeviceMatrix const v = linear(l, Proj::v, h);                        // (n, H_kv hd)
    k::rope_forward(q.view(), positions, c.n_heads, c.head_dim, c.rope_theta);
    k::rope_forward(kk.view(), positions, c.n_kv_heads, c.head_dim, c.rope_theta);
    DeviceMatrix attn(n, c.q_dim());  // (n, H hd)
    k::attention_forward(q.view(), kk.view(), v.view(), B::data(db.offsets), db.n_seq, c.n_heads, c.n_kv_heads, c.head_dim,
                         attn.view());
    DeviceMatrix x1 = x;  // (n, d) x + o(attn)
    B::add(1.0f, linear(l, Proj::o, attn).view(), x1.view());
    DeviceMatrix const h2 = rmsnorm(x1, L.mlp_norm, B::data(rstd2));
    DeviceMatrix const gate = linear(l, Proj::gate, h2), up = linear(l, Proj::up, h2);  // (n, f)
    DeviceMatrix act(n, c.intermediate);  // (n, f) silu(gate) * up
    k::swiglu_forward(gate.view(), up.view(), act.view());
    // ---- backward: x2 = x1 + down(act), x1 = x + o(attn)
    DeviceMatrix dact(n, c.intermediate);
    linear_backward(l, Proj::down, act, dx, dact);
    DeviceMatrix dgate(n, c.intermediate), dup(n, c.intermediate);
    k::swiglu_backward(gate.view(), up.view(), dact.view(), dgate.view(), dup.view());
    DeviceMatrix dh2(n, d);
    linear_backward(l, Proj::gate, h2, dgate, dh2);
    linear_backward(l, Proj::up, h2, dup, dh2);
    k::rmsnorm_backward(x1.view(), B::data(L.mlp_norm), B::data(rstd2), dh2.view(), dx.view());  // dx = dx1
    DeviceMatrix dattn(n, c.q_dim());
    linear_backward(l, Proj::o, attn, dx, dattn);
    DeviceMatrix dq(n, c.q_dim()), dk(n, c.kv_dim()), dv(n, c.kv_dim());
    k::attention_backward(q.view(), kk.view(), v.view(), B::data(db.offsets), db.n_seq, c.n_heads, c.n_kv_heads, c.head_dim,
                          dattn.view(), dq.view(), dk.view(), dv.view());
    k::rope_backward(dq.view(), positions, c.n_heads, c.head_dim, c.rope_theta);
    k::rope_backward(dk.view(), positions, c.n_kv_heads, c.head_dim, c.rope_theta);
    DeviceMatrix dh(n, d);
    linear_backward(l, Proj::q, h, dq, dh);
    linear_backward(l, Proj::k, h, dk, dh);
    linear_backward(l, Proj::v, h, dv, dh);
    k::rmsnorm_backward(x.view(), B::data(L.attn_norm), B::data(rstd1), dh.view(), dx.view());  // dx = dx_in
  }

  /// One decode step's logits, left on the device.   returns (n_active, V)
  DeviceMatrix decode_logits(std::span<std::int32_t const> tokens, std::span<Index const> slots, DeviceKvCache& cache) const {
    namespace k = backend::cuda;
    auto const& c = config_;
    Index const n = static_cast<Index>(tokens.size());
    std::vector<std::int32_t> positions(tokens.size());
    std::vector<Index> lengths(tokens.size()), rows(tokens.size());  // (n) each
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      Index const len = cache.length[static_cast<std::size_t>(slots[i])];
      TINYLORA_CHECK(len < cache.capacity, "Decoder::decode_step(): slot ", slots[i], " is full (capacity ", cache.capacity,
                     "). Hint: raise the generation length limit's cache capacity.");
      positions[i] = static_cast<std::int32_t>(len);
      lengths[i] = len + 1;
      rows[i] = slots[i] * cache.capacity + len;  // the cache row of this token's key and value
    }
    check_ids(tokens);
    auto const dev_tokens = B::upload(tokens);
    auto const dev_positions = B::upload(std::span<std::int32_t const>(positions));
    auto const dev_lengths = B::upload(std::span<Index const>(lengths)), dev_slots = B::upload(slots);
    auto const dev_rows = B::upload(std::span<Index const>(rows));
    DeviceMatrix x = embed(dev_tokens, n);  // (n, d)
    for (int l = 0; l < c.n_layers; ++l) {
      auto& cache_k = cache.k[static_cast<std::size_t>(l)];
      auto& cache_v = cache.v[static_cast<std::size_t>(l)];
      Qkv const in = attention_inputs(l, x, B::data(dev_positions));
      k::scatter_rows(in.k.view(), B::data(dev_rows), cache_k.view());
      k::scatter_rows(in.v.view(), B::data(dev_rows), cache_v.view());
      DeviceMatrix attn(n, c.q_dim());  // (n, H hd)
      k::attention_decode(in.q.view(), cache_k.view(), cache_v.view(), cache.capacity, B::data(dev_lengths), B::data(dev_slots),
                          c.n_heads, c.n_kv_heads, c.head_dim, attn.view());
      finish_block(l, attn, x);
    }
    for (std::size_t i = 0; i < tokens.size(); ++i) cache.length[static_cast<std::size_t>(slots[i])] += 1;
    return head_of(rmsnorm(x, w_.final_norm));
  }

  ModelConfig config_;
  ModelWeights<B, P> w_;
  LinearAdapters* adapters_ = nullptr;
};

}  // namespace tinylora::model
