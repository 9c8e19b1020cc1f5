// tinylora/model/decoder.hpp: a Llama-family decoder (Llama, Mistral, Qwen2, SmolLM2) over a packed
// batch of sequences, written as the paper's model reads:
//   x = E[ids]
//   for each block:  h = RMSNorm(x);  q, k, v = h W_q^T, h W_k^T, h W_v^T (+ biases, + adapters)
//                    q, k = RoPE(q), RoPE(k);  x += Attention(q, k, v) W_o^T
//                    h = RMSNorm(x);  x += (silu(h W_gate^T) * (h W_up^T)) W_down^T
//   logits = RMSNorm(x) E_head^T  -- computed only at rows where a logit or a loss is needed.
// Every adapted linear calls the recipe's adapter through LinearAdapters, so the model itself never
// knows which adapter kind is plugged in.
// Threading: a batch of several sequences (rows, when decoding) is cut into one part per thread of
// about equal cost and each thread runs the whole stack on its part (core/parallel.hpp); a single
// sequence runs each operation in parallel instead. The backward pass is parallel per operation.
#pragma once

#include <algorithm>
#include <array>
#include <filesystem>
#include <memory>
#include <mutex>
#include <numeric>
#include <span>
#include <vector>

#include "tinylora/backend/cpu/kernels.hpp"
#include "tinylora/backend/cpu/kernels_backward.hpp"
#include "tinylora/backend/cpu/packed_gemm.hpp"
#include "tinylora/core/host_matrix.hpp"
#include "tinylora/core/parallel.hpp"
#include "tinylora/core/profile.hpp"
#include "tinylora/model/weights.hpp"

namespace tinylora::model {

/// The hook through which an adapter set changes the block's linears: Y += X Delta W^T, and in the
/// backward pass dX += dY Delta W while the adapter accumulates the gradient of its trainable slots.
struct LinearAdapters {
  virtual ~LinearAdapters() = default;
  virtual void apply(int layer, Proj proj, ConstMatrixView<float> X, MatrixView<float> Y) const = 0;
  virtual void backward(int layer, Proj proj, ConstMatrixView<float> X, ConstMatrixView<float> dY, MatrixView<float> dX) = 0;
};

/// Sequences packed back to back: sequence s owns tokens [offsets[s], offsets[s+1]).
struct PackedBatch {
  std::vector<std::int32_t> ids;        // (n)
  std::vector<std::int32_t> positions;  // (n) position within its sequence
  std::vector<Index> offsets{0};        // (n_seq + 1)

  Index n_tokens() const { return static_cast<Index>(ids.size()); }
  Index n_seq() const { return static_cast<Index>(offsets.size()) - 1; }
  void add(std::span<std::int32_t const> seq) {
    for (std::size_t i = 0; i < seq.size(); ++i) {
      ids.push_back(seq[i]);
      positions.push_back(static_cast<std::int32_t>(i));
    }
    offsets.push_back(n_tokens());
  }
  /// Sequences [s0, s1) as a batch of their own.
  PackedBatch slice(Index s0, Index s1) const {
    PackedBatch out;
    auto const t0 = static_cast<std::size_t>(offsets[static_cast<std::size_t>(s0)]);
    auto const t1 = static_cast<std::size_t>(offsets[static_cast<std::size_t>(s1)]);
    out.ids.assign(ids.begin() + static_cast<std::ptrdiff_t>(t0), ids.begin() + static_cast<std::ptrdiff_t>(t1));
    out.positions.assign(positions.begin() + static_cast<std::ptrdiff_t>(t0), positions.begin() + static_cast<std::ptrdiff_t>(t1));
    for (Index s = s0 + 1; s <= s1; ++s) out.offsets.push_back(offsets[static_cast<std::size_t>(s)] - static_cast<Index>(t0));
    return out;
  }
};

/// Masked token-mean cross-entropy: sum and count kept apart so batches can be combined.
struct LossResult {
  double sum_nll = 0;
  Index n_tokens = 0;
  double mean() const { return n_tokens > 0 ? sum_nll / static_cast<double>(n_tokens) : 0.0; }
};

/// Keys (after RoPE) and values of every layer for incremental decoding. Slot s holds one
/// sequence's rows [s * capacity, s * capacity + length[s]).
struct KvCache {
  Index capacity = 0;
  std::vector<HostMatrix> k, v;  // per layer: (n_slots * capacity, H_kv hd)
  std::vector<Index> length;     // (n_slots)

  KvCache(int n_layers, Index n_slots, Index capacity_, Index kv_dim)
      : capacity(capacity_), length(static_cast<std::size_t>(n_slots), 0) {
    for (int l = 0; l < n_layers; ++l) {
      k.emplace_back(n_slots * capacity, kv_dim);
      v.emplace_back(n_slots * capacity, kv_dim);
    }
  }
  Index n_slots() const { return static_cast<Index>(length.size()); }
  /// Slot `to` becomes a copy of slot `from` (a shared prompt prefix encoded once).
  void copy_slot(Index from, Index to) {
    Index const n = length[static_cast<std::size_t>(from)];
    for (std::size_t l = 0; l < k.size(); ++l) {
      k[l].middleRows(to * capacity, n) = k[l].middleRows(from * capacity, n);
      v[l].middleRows(to * capacity, n) = v[l].middleRows(from * capacity, n);
    }
    length[static_cast<std::size_t>(to)] = n;
  }
};

/// The rows whose logits predict a supervised token (t - 1 for every supervised t > 0 of a
/// sequence) and those tokens.   returns (rows, targets), both (m)
inline std::pair<std::vector<Index>, std::vector<std::int32_t>> supervised_targets(PackedBatch const& batch,
                                                                                  std::span<std::uint8_t const> supervised,
                                                                                  char const* who) {
  TINYLORA_CHECK(static_cast<Index>(supervised.size()) == batch.n_tokens(), who, ": mask has ", supervised.size(),
                 " entries for ", batch.n_tokens(), " tokens");
  std::vector<Index> rows;
  std::vector<std::int32_t> targets;
  for (Index s = 0; s < batch.n_seq(); ++s)
    for (Index t = batch.offsets[s] + 1; t < batch.offsets[s + 1]; ++t)
      if (supervised[static_cast<std::size_t>(t)]) {
        rows.push_back(t - 1);
        targets.push_back(batch.ids[static_cast<std::size_t>(t)]);
      }
  return {std::move(rows), std::move(targets)};
}

/// The last token's row of every sequence (where the next token's logits are read).   returns (n_seq)
inline std::vector<Index> last_rows(PackedBatch const& batch) {
  std::vector<Index> rows;
  for (Index s = 0; s < batch.n_seq(); ++s) rows.push_back(batch.offsets[s + 1] - 1);
  return rows;
}

/// A decoder's configuration and weights from a GGUF file (F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q4_K/Q6_K
/// tensors, dequantized).
template <class B, class P>
std::pair<ModelConfig, ModelWeights<B, P>> load_model_gguf(std::filesystem::path const& path) {
  io::GgufFile const f = io::GgufFile::open(path);
  ModelConfig c = config_from_gguf(f);
  auto w = load_weights_gguf<B, P>(f, c);
  return {std::move(c), std::move(w)};
}

/// The same from a Hugging Face model folder (config.json + safetensors).
template <class B, class P>
std::pair<ModelConfig, ModelWeights<B, P>> load_model_hf(std::filesystem::path const& dir) {
  auto const hf = io::HfModelDir::open(dir);
  ModelConfig c = config_from_hf(hf);
  auto w = load_weights_hf<B, P>(hf, c);
  return {std::move(c), std::move(w)};
}

/// The frozen weight of one projection as a host float matrix (d_out, d_in), e.g. for its SVD.
template <class B, class P>
HostMatrix weight_matrix_of(ModelWeights<B, P> const& w, int layer, Proj p) {
  auto const& m = w.layers[static_cast<std::size_t>(layer)].proj[static_cast<int>(p)];
  auto const host = B::download(m.data);
  HostMatrix out(m.rows, m.cols);
  for (Index i = 0; i < out.size(); ++i) out.data()[i] = static_cast<float>(host[static_cast<std::size_t>(i)]);
  return out;
}

template <class B, class P>
class Decoder {
 public:
  using W = typename P::weight_type;
  using Cache = KvCache;  // what generate() allocates for decode_step()

  Decoder(ModelConfig config, ModelWeights<B, P> weights) : config_(std::move(config)), w_(std::move(weights)) {}
  explicit Decoder(std::pair<ModelConfig, ModelWeights<B, P>> loaded) : Decoder(std::move(loaded.first), std::move(loaded.second)) {}

  /// Loads a GGUF decoder (load_model_gguf), a Hugging Face folder (load_model_hf), or either by
  /// what the path is.
  static Decoder load_gguf(std::filesystem::path const& path) { return Decoder(load_model_gguf<B, P>(path)); }
  static Decoder load_hf(std::filesystem::path const& dir) { return Decoder(load_model_hf<B, P>(dir)); }
  static Decoder load(std::filesystem::path const& path) {
    return std::filesystem::is_directory(path) ? load_hf(path) : load_gguf(path);
  }

  ModelConfig const& config() const { return config_; }
  ModelWeights<B, P> const& weights() const { return w_; }
  /// Writable weights (merging an adapter): decoding's packed copies are dropped and rebuilt from
  /// the new values on the next decode step.
  ModelWeights<B, P>& weights() {
    decode_panels_ = std::make_shared<DecodePanels>();
    return w_;
  }
  void set_adapters(LinearAdapters* adapters) { adapters_ = adapters; }
  LinearAdapters* adapters() const { return adapters_; }

  /// The frozen weight of one projection as a host float matrix (d_out, d_in), e.g. for its SVD.
  HostMatrix weight_matrix(int layer, Proj p) const { return weight_matrix_of(w_, layer, p); }

  /// The final hidden states RMSNorm(x) of every token.   returns (n, d)
  /// With a cache, sequence s's keys and values are also stored in slot slots[s] (prefill).
  HostMatrix hidden_states(PackedBatch const& batch, KvCache* cache = nullptr, std::span<Index const> slots = {}) const {
    std::vector<Index> const parts = sequence_parts(batch);  // (n_parts + 1) sequence bounds
    if (parts.size() <= 2) return hidden_states_serial(batch, cache, slots);
    HostMatrix y(batch.n_tokens(), config_.hidden);  // (n, d)
    parallel::run_parts(static_cast<Index>(parts.size()) - 1, [&](Index p) {
      Index const s0 = parts[static_cast<std::size_t>(p)], s1 = parts[static_cast<std::size_t>(p) + 1];
      HostMatrix const part = hidden_states_serial(batch.slice(s0, s1), cache, cache != nullptr ? slots.subspan(s0, s1 - s0) : slots);
      y.middleRows(batch.offsets[s0], part.rows()) = part;
    });
    return y;
  }

  /// hidden_states() of the whole batch on the calling thread (each operation may still be parallel).
  HostMatrix hidden_states_serial(PackedBatch const& batch, KvCache* cache = nullptr, std::span<Index const> slots = {}) const {
    Index const n = batch.n_tokens(), d = config_.hidden;
    HostMatrix x(n, d);  // (n, d) residual stream
    backend::cpu::embedding_forward(w_.embed.view(), batch.ids, view_of(x));
    for (int l = 0; l < config_.n_layers; ++l) block_forward(l, batch, x, cache, slots);
    if (cache != nullptr)
      for (Index s = 0; s < batch.n_seq(); ++s)
        cache->length[static_cast<std::size_t>(slots[s])] = batch.offsets[s + 1] - batch.offsets[s];
    HostMatrix y(n, d);
    backend::cpu::rmsnorm_forward(ConstMatrixView<float>(view_of(x)), B::data(w_.final_norm), config_.rms_eps, view_of(y));
    return y;
  }

  /// Logits at the given rows of the packed batch.   returns (rows.size(), V)
  HostMatrix logits(PackedBatch const& batch, std::span<Index const> rows) const {
    HostMatrix const h = hidden_states(batch);
    return head_forward(h, rows);
  }

  /// Logits of every token.   returns (n, V)
  HostMatrix logits(PackedBatch const& batch) const {
    std::vector<Index> rows(static_cast<std::size_t>(batch.n_tokens()));
    std::iota(rows.begin(), rows.end(), Index{0});
    return logits(batch, rows);
  }

  /// Encodes prompts into cache slots slots[s] and returns the logits at each one's last token,
  /// those that pick the first generated token.   returns (n_seq, V)
  HostMatrix prefill(PackedBatch const& batch, KvCache& cache, std::span<Index const> slots) const {
    return head_forward(hidden_states(batch, &cache, slots), last_rows(batch));
  }

  /// Masked next-token cross-entropy. supervised[t] says whether token t is a target: the loss sums
  /// -log p(ids[t] | ids[<t]) over supervised t > 0 of each sequence (the logit at t - 1 predicts t).
  /// The LM head runs only at the rows that predict a supervised token, in chunks of `chunk` rows.
  LossResult loss(PackedBatch const& batch, std::span<std::uint8_t const> supervised, Index chunk = 256) const {
    auto const [rows, targets] = supervised_targets(batch, supervised, "Decoder::loss()");
    LossResult out;
    if (rows.empty()) return out;
    HostMatrix const h = hidden_states(batch);
    for (std::size_t first = 0; first < rows.size(); first += static_cast<std::size_t>(chunk)) {
      std::size_t const count = std::min(rows.size() - first, static_cast<std::size_t>(chunk));
      HostMatrix logits = head_forward(h, std::span<Index const>(rows).subspan(first, count));
      auto const nll = backend::cpu::cross_entropy_forward(view_of(logits), std::span<std::int32_t const>(targets).subspan(first, count));
      for (double x : nll) out.sum_nll += x;
    }
    out.n_tokens = static_cast<Index>(rows.size());
    return out;
  }

  /// The masked loss of loss() and its backward pass: the adapters accumulate the gradient of their
  /// slots (frozen weights get none). Activation policy "recompute per layer": the forward keeps
  /// only each block's input (n, d); the backward recomputes one block at a time, so memory is
  /// O(n_layers n d + one block's intermediates). The gradient is that of sum_nll / normalizer;
  /// normalizer 0 means this batch's own supervised-token count (the token mean). Gradient
  /// accumulation over micro-batches passes the whole batch's token count.
  LossResult loss_and_backward(PackedBatch const& batch, std::span<std::uint8_t const> supervised, Index chunk = 256,
                               Index normalizer = 0) const {
    namespace k = backend::cpu;
    auto const [rows, targets] = supervised_targets(batch, supervised, "Decoder::loss_and_backward()");
    LossResult out;
    if (rows.empty()) return out;
    Activations const a = forward_keeping_inputs(batch);
    // Loss and dL/dy at the supervised rows, chunk by chunk: the LM head runs once per row.
    HostMatrix dy = HostMatrix::Zero(batch.n_tokens(), config_.hidden);  // (n, d)
    float const scale = 1.0f / static_cast<float>(normalizer > 0 ? normalizer : static_cast<Index>(rows.size()));
    for (std::size_t first = 0; first < rows.size(); first += static_cast<std::size_t>(chunk)) {
      std::size_t const count = std::min(rows.size() - first, static_cast<std::size_t>(chunk));
      auto const part = std::span<Index const>(rows).subspan(first, count);
      auto const part_targets = std::span<std::int32_t const>(targets).subspan(first, count);
      HostMatrix logits = head_forward(a.y, part);  // (count, V)
      for (double v : k::cross_entropy_forward(view_of(logits), part_targets)) out.sum_nll += v;
      k::cross_entropy_backward(view_of(logits), part_targets, scale, view_of(logits));
      head_backward_rows(logits, part, dy);
    }
    out.n_tokens = static_cast<Index>(rows.size());
    backward_from(batch, a, dy);
    return out;
  }

  /// log p_T(ids[t] | ids[<t]) = log softmax(z_{t-1} / T)[ids[t]] at every supervised t, in the
  /// order of the supervised tokens (sequence by sequence).   returns (m)
  std::vector<float> token_logprobs(PackedBatch const& batch, std::span<std::uint8_t const> supervised, float temperature = 1.0f,
                                    Index chunk = 256) const {
    auto const [rows, targets] = supervised_targets(batch, supervised, "Decoder::token_logprobs()");
    if (rows.empty()) return {};
    return logprobs_at(hidden_states(batch), rows, targets, temperature, chunk);
  }

  /// The backward pass of any objective J of the supervised tokens' log-probs under softmax(z / T)
  /// (policy gradients: PPO, REINFORCE, KL terms). objective(logp) returns dJ/dlogp, both (m).
  /// Since dlogp_t/dz = (onehot(y_t) - softmax(z / T)) / T, the LM head's gradient is the weighted
  /// cross-entropy gradient with weights -dJ/dlogp and scale 1/T. Three phases: the forward keeping
  /// block inputs, the objective on every log-prob, then the LM head recomputed chunk by chunk for
  /// the backward (so no (m, V) logits are kept). Returns logp.
  template <class Objective>
  std::vector<float> objective_and_backward(PackedBatch const& batch, std::span<std::uint8_t const> supervised, float temperature,
                                            Objective&& objective, Index chunk = 256) const {
    namespace k = backend::cpu;
    auto const [rows, targets] = supervised_targets(batch, supervised, "Decoder::objective_and_backward()");
    if (rows.empty()) return {};
    Activations const a = forward_keeping_inputs(batch);
    std::vector<float> const logp = logprobs_at(a.y, rows, targets, temperature, chunk);  // (m)
    std::vector<float> const dlogp = objective(std::span<float const>(logp));             // (m)
    TINYLORA_CHECK(dlogp.size() == logp.size(), "Decoder::objective_and_backward(): the objective returned ", dlogp.size(),
                   " derivatives for ", logp.size(), " log-probs");
    std::vector<float> weights(dlogp.size());  // -dJ/dlogp
    for (std::size_t i = 0; i < dlogp.size(); ++i) weights[i] = -dlogp[i];
    HostMatrix dy = HostMatrix::Zero(batch.n_tokens(), config_.hidden);  // (n, d)
    for (std::size_t first = 0; first < rows.size(); first += static_cast<std::size_t>(chunk)) {
      std::size_t const count = std::min(rows.size() - first, static_cast<std::size_t>(chunk));
      auto const part = std::span<Index const>(rows).subspan(first, count);
      HostMatrix logits = head_forward(a.y, part);  // (count, V)
      if (temperature != 1.0f) logits /= temperature;
      k::cross_entropy_backward(view_of(logits), std::span<std::int32_t const>(targets).subspan(first, count), 1.0f / temperature,
                                view_of(logits), std::span<float const>(weights).subspan(first, count));
      head_backward_rows(logits, part, dy);
    }
    backward_from(batch, a, dy);
    return logp;
  }

  /// Y = X W^T (+ bias) (+ the adapter's X Delta W^T).   X: (n, d_in), returns (n, d_out)
  /// When decoding, W's panel-packed copy is used (same values, see decode_panels()).
  HostMatrix linear(int layer, Proj p, HostMatrix const& X, bool decoding = false) const {
    auto const& L = w_.layers[static_cast<std::size_t>(layer)];
    auto const& m = L.proj[static_cast<int>(p)];
    int const pi = static_cast<int>(p);
    TINYLORA_PROFILE_SCOPE(kGemmNames[pi]);
    HostMatrix Y(X.rows(), m.rows);
    product(view_of(X), m.view(), decoding, [&](DecodePanels const& d) -> auto const& {
      return d.proj[static_cast<std::size_t>(layer)][static_cast<std::size_t>(pi)];
    }, view_of(Y));
    if (config_.qkv_bias && pi < 3) backend::cpu::add_bias(view_of(Y), B::data(L.qkv_bias[static_cast<std::size_t>(pi)]));
    if (adapters_ != nullptr) {
      TINYLORA_PROFILE_SCOPE("adapters (apply)");
      adapters_->apply(layer, p, view_of(X), view_of(Y));
    }
    return Y;
  }

  /// One new token per active sequence: token[i] at position cache.length[slots[i]] of slot
  /// slots[i]; its key and value are appended to the cache.   returns logits (n_active, V)
  HostMatrix decode_step(std::span<std::int32_t const> tokens, std::span<Index const> slots, KvCache& cache) const {
    Index const n = static_cast<Index>(tokens.size());
    // Parts of at least kMinDecodeRows rows: below that each thread would stream every weight for
    // its few rows, and splitting each product's weights between threads is faster (measured at 32
    // rows on SmolLM2: 216 generated tok/s split by weights vs 175 split by rows).
    constexpr Index kMinDecodeRows = 64;
    int const threads = static_cast<int>(std::min<Index>(parallel::available_threads(), n / kMinDecodeRows));
    std::vector<Index> const parts = parallel::balanced_ranges(n, threads, [](Index) { return 1.0; });
    if (parts.size() <= 2) return decode_rows(tokens, slots, cache);
    HostMatrix logits(n, config_.vocab);  // (n, V)
    parallel::run_parts(static_cast<Index>(parts.size()) - 1, [&](Index p) {
      Index const r0 = parts[static_cast<std::size_t>(p)], r1 = parts[static_cast<std::size_t>(p) + 1];
      logits.middleRows(r0, r1 - r0) = decode_rows(tokens.subspan(r0, r1 - r0), slots.subspan(r0, r1 - r0), cache);
    });
    return logits;
  }

  /// decode_step() of all rows on the calling thread.   returns logits (n_active, V)
  HostMatrix decode_rows(std::span<std::int32_t const> tokens, std::span<Index const> slots, KvCache& cache) const {
    TINYLORA_PROFILE_SCOPE("decode step glue");
    namespace k = backend::cpu;
    Index const n = static_cast<Index>(tokens.size()), d = config_.hidden;
    std::vector<std::int32_t> positions(tokens.size());
    std::vector<Index> lengths(tokens.size());
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      Index const len = cache.length[static_cast<std::size_t>(slots[i])];
      TINYLORA_CHECK(len < cache.capacity, "Decoder::decode_step(): slot ", slots[i], " is full (capacity ",
                     cache.capacity, "). Hint: raise the generation length limit's cache capacity.");
      positions[i] = static_cast<std::int32_t>(len);
      lengths[i] = len + 1;
    }
    HostMatrix x(n, d);  // (n, d)
    k::embedding_forward(w_.embed.view(), tokens, view_of(x));
    HostMatrix h(n, d);
    for (int l = 0; l < config_.n_layers; ++l) {
      auto const& L = w_.layers[static_cast<std::size_t>(l)];
      k::rmsnorm_forward(ConstMatrixView<float>(view_of(x)), B::data(L.attn_norm), config_.rms_eps, view_of(h));
      HostMatrix q = linear(l, Proj::q, h, true);        // (n, H hd)
      HostMatrix kk = linear(l, Proj::k, h, true);       // (n, H_kv hd)
      HostMatrix const v = linear(l, Proj::v, h, true);  // (n, H_kv hd)
      k::rope_forward(view_of(q), positions, config_.n_heads, config_.head_dim, config_.rope_theta);
      k::rope_forward(view_of(kk), positions, config_.n_kv_heads, config_.head_dim, config_.rope_theta);
      for (Index i = 0; i < n; ++i) {
        Index const row = slots[static_cast<std::size_t>(i)] * cache.capacity + positions[static_cast<std::size_t>(i)];
        cache.k[static_cast<std::size_t>(l)].row(row) = kk.row(i);
        cache.v[static_cast<std::size_t>(l)].row(row) = v.row(i);
      }
      HostMatrix attn(n, config_.q_dim());  // (n, H hd)
      k::attention_decode(view_of(q), view_of(cache.k[static_cast<std::size_t>(l)]), view_of(cache.v[static_cast<std::size_t>(l)]),
                          cache.capacity, lengths, slots, config_.n_heads, config_.n_kv_heads, config_.head_dim,
                          view_of(attn));
      x += linear(l, Proj::o, attn, true);
      k::rmsnorm_forward(ConstMatrixView<float>(view_of(x)), B::data(L.mlp_norm), config_.rms_eps, view_of(h));
      HostMatrix gate = linear(l, Proj::gate, h, true);
      HostMatrix const up = linear(l, Proj::up, h, true);
      k::swiglu_forward(view_of(gate), view_of(up), view_of(gate));
      x += linear(l, Proj::down, gate, true);
    }
    for (std::size_t i = 0; i < tokens.size(); ++i) cache.length[static_cast<std::size_t>(slots[i])] += 1;
    HostMatrix y(n, d);
    k::rmsnorm_forward(ConstMatrixView<float>(view_of(x)), B::data(w_.final_norm), config_.rms_eps, view_of(y));
    std::vector<Index> rows(static_cast<std::size_t>(n));
    std::iota(rows.begin(), rows.end(), Index{0});
    return head_forward(y, rows, true);
  }

  /// logits = h[rows] E_head^T.   h: (n, d), returns (rows, V)
  HostMatrix head_forward(HostMatrix const& h, std::span<Index const> rows, bool decoding = false) const {
    TINYLORA_PROFILE_SCOPE("lm head (GEMM)");
    HostMatrix sel(static_cast<Index>(rows.size()), h.cols());
    for (std::size_t i = 0; i < rows.size(); ++i) sel.row(static_cast<Index>(i)) = h.row(rows[i]);
    HostMatrix logits(sel.rows(), config_.vocab);
    product(view_of(sel), w_.head(), decoding, [](DecodePanels const& d) -> auto const& { return d.head; }, view_of(logits));
    return logits;
  }

 private:
  /// Decode steps multiply a few rows by every weight; with fp32 weights in host memory they use
  /// copies packed into panels (backend/cpu/packed_gemm.hpp), which a general GEMM would otherwise
  /// rebuild on every call. The copies cost as much memory as the weights and are made on the
  /// first decode step.
  static constexpr bool kPanelDecode =
      std::is_same_v<W, float> && std::is_same_v<typename B::template Buffer<float>, std::vector<float>>;

  struct DecodePanels {
    std::once_flag packed;
    std::vector<std::array<backend::cpu::PanelPackedWeight, kProjCount>> proj;  // (n_layers, kProjCount) as w_.layers[l].proj
    backend::cpu::PanelPackedWeight head;                              // E_head (V, d)
  };

  /// Y = X W^T; in a decode step through W's packed copy, packed(decode_panels()).
  ///   X: (n, d_in), W: (d_out, d_in), Y: (n, d_out)
  template <class Packed>
  void product(ConstMatrixView<float> X, ConstMatrixView<W> Wt, bool decoding, Packed packed, MatrixView<float> Y) const {
    if constexpr (kPanelDecode) {
      if (decoding) return backend::cpu::gemm_packed(X, packed(decode_panels()), Y);
    }
    B::gemm(Op::N, Op::T, 1.0f, X, Wt, 0.0f, Y);
  }

  /// The packed copies, made on first use (thread-safe: parallel decode parts may ask at once).
  DecodePanels const& decode_panels() const {
    DecodePanels& d = *decode_panels_;
    std::call_once(d.packed, [&] {
      TINYLORA_PROFILE_SCOPE("pack weights for decoding");
      d.proj.resize(w_.layers.size());
      for (std::size_t l = 0; l < w_.layers.size(); ++l)
        for (std::size_t p = 0; p < kProjCount; ++p) d.proj[l][p] = backend::cpu::PanelPackedWeight(w_.layers[l].proj[p].view());
      d.head = backend::cpu::PanelPackedWeight(w_.head());
    });
    return d;
  }

  static constexpr char const* kGemmNames[7] = {"W_q (GEMM)", "W_k (GEMM)", "W_v (GEMM)", "W_o (GEMM)",
                                                "W_gate (GEMM)", "W_up (GEMM)", "W_down (GEMM)"};

  /// What the backward needs from the forward under "recompute per layer".
  struct Activations {
    std::vector<HostMatrix> inputs;  // (n_layers) block inputs, (n, d) each
    HostMatrix x;                    // (n, d) the last block's output
    HostMatrix y;                    // (n, d) RMSNorm(x), the LM head's input
    std::vector<float> rstd;         // (n) the final norm's 1 / rms
  };

  Activations forward_keeping_inputs(PackedBatch const& batch) const {
    Index const n = batch.n_tokens(), d = config_.hidden;
    Activations a{std::vector<HostMatrix>(static_cast<std::size_t>(config_.n_layers), HostMatrix(n, d)), HostMatrix(n, d),
                  HostMatrix(n, d), std::vector<float>(static_cast<std::size_t>(n))};
    std::vector<Index> const parts = sequence_parts(batch);  // (n_parts + 1) sequence bounds
    parallel::run_parts(static_cast<Index>(parts.size()) - 1, [&](Index p) {
      Index const s0 = parts[static_cast<std::size_t>(p)], s1 = parts[static_cast<std::size_t>(p) + 1];
      forward_keeping_inputs_rows(parts.size() <= 2 ? batch : batch.slice(s0, s1), batch.offsets[s0], a);
    });
    return a;
  }

  /// The forward of a batch whose tokens are rows [row0, row0 + n) of a's matrices.
  void forward_keeping_inputs_rows(PackedBatch const& batch, Index row0, Activations& a) const {
    namespace k = backend::cpu;
    Index const n = batch.n_tokens(), d = config_.hidden;
    HostMatrix x(n, d);  // (n, d) residual stream
    k::embedding_forward(w_.embed.view(), batch.ids, view_of(x));
    for (int l = 0; l < config_.n_layers; ++l) {
      a.inputs[static_cast<std::size_t>(l)].middleRows(row0, n) = x;
      block_forward(l, batch, x, nullptr, {});
    }
    a.x.middleRows(row0, n) = x;
    HostMatrix y(n, d);  // (n, d)
    k::rmsnorm_forward(ConstMatrixView<float>(view_of(x)), B::data(w_.final_norm), config_.rms_eps, view_of(y),
                       std::span<float>(a.rstd).subspan(static_cast<std::size_t>(row0), static_cast<std::size_t>(n)));
    a.y.middleRows(row0, n) = y;
  }

  /// Sequence bounds of one part per available thread, by the forward's cost: per token every
  /// projection (~2 |W| flops) plus attention over its prefix (~4 q_dim t flops).   returns (n_parts + 1)
  std::vector<Index> sequence_parts(PackedBatch const& batch) const {
    double const per_token = 2.0 * static_cast<double>(2 * config_.hidden * config_.q_dim() + 2 * config_.hidden * config_.kv_dim() +
                                                       3 * config_.hidden * config_.intermediate);
    return parallel::balanced_ranges(batch.n_seq(), parallel::available_threads(), [&](Index s) {
      double const len = static_cast<double>(batch.offsets[s + 1] - batch.offsets[s]);
      return len * (per_token + 2.0 * static_cast<double>(config_.q_dim()) * len);
    });
  }

  /// dy: dL/dy at the final norm's output (n, d) -> back through the norm and every block.
  void backward_from(PackedBatch const& batch, Activations const& a, HostMatrix const& dy) const {
    HostMatrix dx = HostMatrix::Zero(batch.n_tokens(), config_.hidden);  // (n, d) dL/dx of the residual stream
    backend::cpu::rmsnorm_backward(ConstMatrixView<float>(view_of(a.x)), B::data(w_.final_norm), a.rstd, view_of(dy), view_of(dx));
    for (int l = config_.n_layers - 1; l >= 0; --l) block_backward(l, batch, a.inputs[static_cast<std::size_t>(l)], dx);
  }

  /// dy[rows[i]] += dlogits[i] E_head.   dlogits: (rows, V), dy: (n, d)
  void head_backward_rows(HostMatrix const& dlogits, std::span<Index const> rows, HostMatrix& dy) const {
    HostMatrix dh = HostMatrix::Zero(static_cast<Index>(rows.size()), config_.hidden);  // (rows, d)
    backend::cpu::head_backward(ConstMatrixView<float>(view_of(dlogits)), w_.head(), view_of(dh));
    for (std::size_t i = 0; i < rows.size(); ++i) dy.row(rows[i]) += dh.row(static_cast<Index>(i));
  }

  /// log softmax(h[rows] E_head^T / T)[targets], chunk by chunk.   h: (n, d), returns (rows)
  std::vector<float> logprobs_at(HostMatrix const& h, std::span<Index const> rows, std::span<std::int32_t const> targets,
                                 float temperature, Index chunk) const {
    TINYLORA_CHECK(temperature > 0, "Decoder: the temperature must be > 0 (got ", temperature, ")");
    std::vector<float> out;
    out.reserve(rows.size());
    for (std::size_t first = 0; first < rows.size(); first += static_cast<std::size_t>(chunk)) {
      std::size_t const count = std::min(rows.size() - first, static_cast<std::size_t>(chunk));
      HostMatrix logits = head_forward(h, rows.subspan(first, count));  // (count, V)
      if (temperature != 1.0f) logits /= temperature;
      for (double nll : backend::cpu::cross_entropy_forward(view_of(logits), targets.subspan(first, count)))
        out.push_back(static_cast<float>(-nll));
    }
    return out;
  }

  /// x += Attention(RoPE(q), RoPE(k), v) W_o^T;  x += SwiGLU(h) W_down^T.   x: (n, d) in place
  void block_forward(int l, PackedBatch const& batch, HostMatrix& x, KvCache* cache, std::span<Index const> slots) const {
    TINYLORA_PROFILE_SCOPE("block glue (residual adds, cache writes)");
    namespace k = backend::cpu;
    auto const& L = w_.layers[static_cast<std::size_t>(l)];
    Index const n = x.rows(), d = config_.hidden;
    HostMatrix h(n, d);  // (n, d)
    k::rmsnorm_forward(ConstMatrixView<float>(view_of(x)), B::data(L.attn_norm), config_.rms_eps, view_of(h));
    HostMatrix q = linear(l, Proj::q, h);  // (n, H hd)
    HostMatrix kk = linear(l, Proj::k, h);  // (n, H_kv hd)
    HostMatrix const v = linear(l, Proj::v, h);  // (n, H_kv hd)
    k::rope_forward(view_of(q), batch.positions, config_.n_heads, config_.head_dim, config_.rope_theta);
    k::rope_forward(view_of(kk), batch.positions, config_.n_kv_heads, config_.head_dim, config_.rope_theta);
    if (cache != nullptr)
      for (Index s = 0; s < batch.n_seq(); ++s) {
        Index const begin = batch.offsets[s], len = batch.offsets[s + 1] - begin;
        TINYLORA_CHECK(len <= cache->capacity, "Decoder::hidden_states(): a prompt of ", len,
                       " tokens does not fit the cache capacity ", cache->capacity);
        Index const base = slots[static_cast<std::size_t>(s)] * cache->capacity;
        cache->k[static_cast<std::size_t>(l)].middleRows(base, len) = kk.middleRows(begin, len);
        cache->v[static_cast<std::size_t>(l)].middleRows(base, len) = v.middleRows(begin, len);
      }
    HostMatrix attn(n, config_.q_dim());  // (n, H hd)
    k::attention_forward(view_of(q), view_of(kk), view_of(v), batch.offsets, config_.n_heads, config_.n_kv_heads,
                         config_.head_dim, view_of(attn));
    x += linear(l, Proj::o, attn);
    k::rmsnorm_forward(ConstMatrixView<float>(view_of(x)), B::data(L.mlp_norm), config_.rms_eps, view_of(h));
    HostMatrix gate = linear(l, Proj::gate, h);  // (n, f)
    HostMatrix const up = linear(l, Proj::up, h);  // (n, f)
    k::swiglu_forward(view_of(gate), view_of(up), view_of(gate));
    x += linear(l, Proj::down, gate);
  }

  /// dX += dY W (frozen W: no gradient of its own) and the adapter's part.   dY: (n, d_out), dX: (n, d_in)
  void linear_backward(int layer, Proj p, HostMatrix const& X, HostMatrix const& dY, HostMatrix& dX) const {
    auto const& m = w_.layers[static_cast<std::size_t>(layer)].proj[static_cast<int>(p)];
    {
      TINYLORA_PROFILE_SCOPE("projections backward (GEMM dY W)");
      B::gemm(Op::N, Op::N, 1.0f, view_of(dY), m.view(), 1.0f, view_of(dX));
    }
    if (adapters_ != nullptr) {
      TINYLORA_PROFILE_SCOPE("adapters (backward)");
      adapters_->backward(layer, p, view_of(X), view_of(dY), view_of(dX));
    }
  }

  /// Recomputes block l from its input x and back-propagates dx (the gradient w.r.t. its output on
  /// entry, w.r.t. its input on return).   x, dx: (n, d)
  void block_backward(int l, PackedBatch const& batch, HostMatrix const& x, HostMatrix& dx) const {
    TINYLORA_PROFILE_SCOPE("block backward glue");
    namespace k = backend::cpu;
    auto const& L = w_.layers[static_cast<std::size_t>(l)];
    auto const& c = config_;
    Index const n = x.rows(), d = c.hidden;
    // ---- forward, keeping what the backward needs
    HostMatrix h(n, d);  // (n, d)
    std::vector<float> rstd1(static_cast<std::size_t>(n)), rstd2(static_cast<std::size_t>(n));
    k::rmsnorm_forward(ConstMatrixView<float>(view_of(x)), B::data(L.attn_norm), c.rms_eps, view_of(h), rstd1);
    HostMatrix q = linear(l, Proj::q, h), kk = linear(l, Proj::k, h);  // (n, H hd), (n, H_kv hd)
    HostMatrix const v = linear(l, Proj::v, h);                           // (n, H_kv hd)
    k::rope_forward(view_of(q), batch.positions, c.n_heads, c.head_dim, c.rope_theta);
    k::rope_forward(view_of(kk), batch.positions, c.n_kv_heads, c.head_dim, c.rope_theta);
    HostMatrix attn(n, c.q_dim());  // (n, H hd)
    k::attention_forward(view_of(q), view_of(kk), view_of(v), batch.offsets, c.n_heads, c.n_kv_heads, c.head_dim, view_of(attn));
    HostMatrix const x1 = x + linear(l, Proj::o, attn);  // (n, d)
    HostMatrix h2(n, d);
    k::rmsnorm_forward(ConstMatrixView<float>(view_of(x1)), B::data(L.mlp_norm), c.rms_eps, view_of(h2), rstd2);
    HostMatrix const gate = linear(l, Proj::gate, h2), up = linear(l, Proj::up, h2);  // (n, f)
    HostMatrix act(n, c.intermediate);  // (n, f) silu(gate) * up
    k::swiglu_forward(view_of(gate), view_of(up), view_of(act));
    // ---- backward: x2 = x1 + down(act), x1 = x + o(attn)
    HostMatrix dact = HostMatrix::Zero(n, c.intermediate);
    linear_backward(l, Proj::down, act, dx, dact);
    HostMatrix dgate(n, c.intermediate), dup(n, c.intermediate);
    k::swiglu_backward(view_of(gate), view_of(up), view_of(dact), view_of(dgate), view_of(dup));
    HostMatrix dh2 = HostMatrix::Zero(n, d);
    linear_backward(l, Proj::gate, h2, dgate, dh2);
    linear_backward(l, Proj::up, h2, dup, dh2);
    k::rmsnorm_backward(ConstMatrixView<float>(view_of(x1)), B::data(L.mlp_norm), rstd2, view_of(dh2), view_of(dx));  // dx = dx1
    HostMatrix dattn = HostMatrix::Zero(n, c.q_dim());
    linear_backward(l, Proj::o, attn, dx, dattn);
    HostMatrix dq(n, c.q_dim()), dk(n, c.kv_dim()), dv(n, c.kv_dim());
    k::attention_backward(view_of(q), view_of(kk), view_of(v), batch.offsets, c.n_heads, c.n_kv_heads, c.head_dim,
                          view_of(dattn), view_of(dq), view_of(dk), view_of(dv));
    k::rope_backward(view_of(dq), batch.positions, c.n_heads, c.head_dim, c.rope_theta);
    k::rope_backward(view_of(dk), batch.positions, c.n_kv_heads, c.head_dim, c.rope_theta);
    HostMatrix dh = HostMatrix::Zero(n, d);
    linear_backward(l, Proj::q, h, dq, dh);
    linear_backward(l, Proj::k, h, dk, dh);
    linear_backward(l, Proj::v, h, dv, dh);
    k::rmsnorm_backward(ConstMatrixView<float>(view_of(x)), B::data(L.attn_norm), rstd1, view_of(dh), view_of(dx));  // dx = dx_in
  }

  ModelConfig config_;
  ModelWeights<B, P> w_;
  LinearAdapters* adapters_ = nullptr;
  mutable std::shared_ptr<DecodePanels> decode_panels_ = std::make_shared<DecodePanels>();
};

}  // namespace tinylora::model
