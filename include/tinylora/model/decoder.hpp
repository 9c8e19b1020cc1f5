// tinylora/model/decoder.hpp: a Llama-family decoder (Llama, Mistral, Qwen2, SmolLM2) over a packed
// batch of sequences, written once over the Backend concept's operations (backend/concepts.hpp), so
// Decoder<Cpu, P> and Decoder<Cuda, P> are this one class. It reads as the paper's model reads:
//   x = E[ids]
//   for each block:  h = RMSNorm(x);  q, k, v = h W_q^T, h W_k^T, h W_v^T (+ biases, + adapters)
//                    q, k = RoPE(q), RoPE(k);  x += Attention(q, k, v) W_o^T
//                    h = RMSNorm(x);  x += (silu(h W_gate^T) * (h W_up^T)) W_down^T
//   logits = RMSNorm(x) E_head^T  -- computed only at rows where a logit or a loss is needed.
// Every adapted linear calls the recipe's adapter through LinearAdapters, so the model itself never
// knows which adapter kind is plugged in. The block appears once: attention_inputs() and
// finish_block() are the forward, shared by the batch forward, the decode step and the backward's
// recompute; block_backward() is its transpose.
// Memory: activations are B::Matrix (host or device); only index arrays go to the backend, and only
// losses, log-probs, sampled tokens or the logits a caller asked for come back.
// Threading: a batch of several sequences (rows, when decoding) is cut into B::max_parts() parts of
// about equal cost and each part runs the whole stack (core/parallel.hpp): one part per thread on the
// CPU, one part in all on a GPU, where each operation covers the whole batch.
#pragma once

#include <algorithm>
#include <array>
#include <filesystem>
#include <memory>
#include <mutex>
#include <numeric>
#include <span>
#include <type_traits>
#include <vector>

#include "tinylora/backend/sampling.hpp"
#include "tinylora/core/host_matrix.hpp"
#include "tinylora/core/parallel.hpp"
#include "tinylora/core/profile.hpp"
#include "tinylora/model/batch.hpp"
#include "tinylora/model/kv_cache.hpp"
#include "tinylora/model/load.hpp"

namespace tinylora::model {

/// The hook through which an adapter set changes the block's linears: Y += X Delta W^T, and in the
/// backward pass dX += dY Delta W while the adapter accumulates the gradient of its trainable slots.
struct LinearAdapters {
  virtual ~LinearAdapters() = default;
  virtual void apply(int layer, Proj proj, ConstMatrixView<float> X, MatrixView<float> Y) const = 0;
  virtual void backward(int layer, Proj proj, ConstMatrixView<float> X, ConstMatrixView<float> dY, MatrixView<float> dX) = 0;
};

namespace detail {
/// B::PackedWeight when the backend packs weights for decode steps (optional), else void.
template <class B>
struct packed_weight_of {
  using type = void;
};
template <class B>
  requires requires { typename B::PackedWeight; }
struct packed_weight_of<B> {
  using type = typename B::PackedWeight;
};
}  // namespace detail

template <class B, class P>
class Decoder {
 public:
  using W = typename P::weight_type;
  using Matrix = typename B::Matrix;  // activations in the backend's memory
  using Cache = KvCache<B>;           // what generate() allocates for decode_step()
  using Sampled = backend::Sampled;
  using SamplingOptions = backend::SamplingOptions;

  Decoder(ModelConfig config, ModelWeights<B, P> weights) : config_(std::move(config)), w_(std::move(weights)) {}
  explicit Decoder(std::pair<ModelConfig, ModelWeights<B, P>> loaded) : Decoder(std::move(loaded.first), std::move(loaded.second)) {}

  /// Loads a GGUF decoder (load_model_gguf), a Hugging Face folder (load_model_hf), or either by
  /// what the path is.
  static Decoder load_gguf(std::filesystem::path const& path) { return Decoder((require_backend(), load_model_gguf<B, P>(path))); }
  static Decoder load_hf(std::filesystem::path const& dir) { return Decoder((require_backend(), load_model_hf<B, P>(dir))); }
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
  HostMatrix hidden_states(PackedBatch const& batch, Cache* cache = nullptr, std::span<Index const> slots = {}) const {
    return B::to_host(hidden(batch, cache, slots));
  }

  /// hidden_states() of the whole batch as one part (each operation may still be parallel).
  HostMatrix hidden_states_serial(PackedBatch const& batch, Cache* cache = nullptr, std::span<Index const> slots = {}) const {
    return B::to_host(hidden_part(batch, cache, slots));
  }

  /// Logits at the given rows of the packed batch.   returns (rows.size(), V)
  HostMatrix logits(PackedBatch const& batch, std::span<Index const> rows) const {
    return B::to_host(head_forward(hidden(batch), rows));
  }

  /// Logits of every token.   returns (n, V)
  HostMatrix logits(PackedBatch const& batch) const {
    std::vector<Index> rows(static_cast<std::size_t>(batch.n_tokens()));
    std::iota(rows.begin(), rows.end(), Index{0});
    return logits(batch, rows);
  }

  /// Encodes prompts into cache slots slots[s] and returns the logits at each one's last token,
  /// those that pick the first generated token.   returns (n_seq, V)
  HostMatrix prefill(PackedBatch const& batch, Cache& cache, std::span<Index const> slots) const {
    return B::to_host(head_forward(hidden(batch, &cache, slots), last_rows(batch)));
  }

  /// Masked next-token cross-entropy. supervised[t] says whether token t is a target: the loss sums
  /// -log p(ids[t] | ids[<t]) over supervised t > 0 of each sequence (the logit at t - 1 predicts t).
  /// The LM head runs only at the rows that predict a supervised token, in chunks of `chunk` rows;
  /// each row's NLL comes back in double.
  LossResult loss(PackedBatch const& batch, std::span<std::uint8_t const> supervised, Index chunk = 256) const {
    auto const [rows, targets] = supervised_targets(batch, supervised, "Decoder::loss()");
    LossResult out;
    if (rows.empty()) return out;
    Matrix const h = hidden(batch);  // (n, d)
    for_each_chunk(rows, targets, chunk, [&](std::span<Index const> part, Targets const& t, std::size_t) {
      Matrix const logits = head_forward(h, part);  // (count, V)
      for (double x : nll(logits, t)) out.sum_nll += x;
    });
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
    auto const [rows, targets] = supervised_targets(batch, supervised, "Decoder::loss_and_backward()");
    LossResult out;
    if (rows.empty()) return out;
    Activations const a = forward_keeping_inputs(batch);
    // Loss and dL/dy at the supervised rows, chunk by chunk: the LM head runs once per row.
    Matrix dy = B::zero_matrix(batch.n_tokens(), config_.hidden);  // (n, d)
    float const scale = 1.0f / static_cast<float>(normalizer > 0 ? normalizer : static_cast<Index>(rows.size()));
    for_each_chunk(rows, targets, chunk, [&](std::span<Index const> part, Targets const& t, std::size_t) {
      Matrix logits = head_forward(a.y, part);  // (count, V)
      for (double x : nll(logits, t)) out.sum_nll += x;
      B::cross_entropy_backward(view_of(logits), B::data(t.ids), scale, view_of(logits), nullptr);
      head_backward_rows(logits, part, dy);
    });
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
    return logprobs_at(hidden(batch), rows, targets, temperature, chunk);
  }

  /// The backward pass of any objective J of the supervised tokens' log-probs under softmax(z / T)
  /// (policy gradients: PPO, REINFORCE, KL terms). objective(logp) returns dJ/dlogp, both (m).
  /// Since dlogp_t/dz = (onehot(y_t) - softmax(z / T)) / T, the LM head's gradient is the weighted
  /// cross-entropy gradient with weights -dJ/dlogp and scale 1/T. Three phases: the forward keeping
  /// block inputs, the objective on every log-prob (on the host), then the LM head recomputed chunk by
  /// chunk for the backward (so no (m, V) logits are kept). Returns logp.
  template <class Objective>
  std::vector<float> objective_and_backward(PackedBatch const& batch, std::span<std::uint8_t const> supervised, float temperature,
                                            Objective&& objective, Index chunk = 256) const {
    auto const [rows, targets] = supervised_targets(batch, supervised, "Decoder::objective_and_backward()");
    if (rows.empty()) return {};
    Activations const a = forward_keeping_inputs(batch);
    std::vector<float> const logp = logprobs_at(a.y, rows, targets, temperature, chunk);  // (m)
    std::vector<float> const dlogp = objective(std::span<float const>(logp));             // (m)
    TINYLORA_CHECK(dlogp.size() == logp.size(), "Decoder::objective_and_backward(): the objective returned ", dlogp.size(),
                   " derivatives for ", logp.size(), " log-probs");
    std::vector<float> weights(dlogp.size());  // -dJ/dlogp
    for (std::size_t i = 0; i < dlogp.size(); ++i) weights[i] = -dlogp[i];
    Matrix dy = B::zero_matrix(batch.n_tokens(), config_.hidden);  // (n, d)
    for_each_chunk(rows, targets, chunk, [&](std::span<Index const> part, Targets const& t, std::size_t first) {
      Matrix logits = head_forward(a.y, part);  // (count, V)
      if (temperature != 1.0f) B::divide(view_of(logits), temperature);
      auto const w = B::upload(std::span<float const>(weights).subspan(first, part.size()));  // (count)
      B::cross_entropy_backward(view_of(logits), B::data(t.ids), 1.0f / temperature, view_of(logits), B::data(w));
      head_backward_rows(logits, part, dy);
    });
    backward_from(batch, a, dy);
    return logp;
  }

  /// One new token per active sequence: token[i] at position cache.length[slots[i]] of slot
  /// slots[i]; its key and value are appended to the cache.   returns logits (n_active, V)
  HostMatrix decode_step(std::span<std::int32_t const> tokens, std::span<Index const> slots, Cache& cache) const {
    return B::to_host(decode_logits(tokens, slots, cache));
  }

  /// decode_step() of all rows as one part.   returns logits (n_active, V)
  HostMatrix decode_rows(std::span<std::int32_t const> tokens, std::span<Index const> slots, Cache& cache) const {
    return B::to_host(decode_part(tokens, slots, cache));
  }

  /// decode_step() and one token drawn per row by B::sample_tokens (sample_token's draw, keyed by
  /// (seed, slot, step)), in the backend's memory: only the tokens and their log-probs come back.
  std::vector<Sampled> decode_sample(std::span<std::int32_t const> tokens, std::span<Index const> slots, Cache& cache,
                                     SamplingOptions const& o, std::uint64_t step, std::uint64_t first_sequence = 0) const {
    Matrix const logits = decode_logits(tokens, slots, cache);  // (n, V)
    Index const n = logits.rows();
    std::vector<std::uint64_t> sequence(slots.begin(), slots.end());  // (n) the draws' sequence ids
    for (auto& id : sequence) id += first_sequence;
    auto const dev_sequence = B::upload(std::span<std::uint64_t const>(sequence));
    auto token = B::template zeros<std::int32_t>(n);
    auto logprob = B::template zeros<float>(n), policy = B::template zeros<float>(n);
    B::sample_tokens(view_of(logits), o, B::data(dev_sequence), step, B::data(token), B::data(logprob), B::data(policy));
    auto const t = B::download(token);
    auto const lp = B::download(logprob), pl = B::download(policy);
    std::vector<Sampled> out(static_cast<std::size_t>(n));
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = {t[i], lp[i], pl[i]};
    return out;
  }

 private:
  using PackedW = typename detail::packed_weight_of<B>::type;

  /// Whether this process can run the backend (a GPU for Cuda); a clear error otherwise.
  static void require_backend() {
    if constexpr (requires { B::available(); })
      TINYLORA_CHECK(B::available(), "Decoder<", B::name, ">: no GPU is visible to this process. Hint: check nvidia-smi and "
                     "CUDA_VISIBLE_DEVICES, or build with the release preset, whose experiments run on backend::Cpu.");
  }

  // ---- index arrays
  /// A packed batch's index arrays in the backend's memory; token ids checked on the host first.
  struct Indices {
    typename B::template Buffer<std::int32_t> ids, positions;  // (n)
    typename B::template Buffer<Index> offsets;                // (n_seq + 1)
    Index n = 0, n_seq = 0;
  };
  Indices upload(PackedBatch const& batch) const {
    check_ids(batch.ids);
    return {B::upload(std::span<std::int32_t const>(batch.ids)), B::upload(std::span<std::int32_t const>(batch.positions)),
            B::upload(std::span<Index const>(batch.offsets)), batch.n_tokens(), batch.n_seq()};
  }
  void check_ids(std::span<std::int32_t const> ids) const {
    for (std::int32_t id : ids)
      TINYLORA_CHECK(id >= 0 && id < config_.vocab, "embedding_forward(): token id ", id, " is outside the vocabulary [0, ",
                     config_.vocab, ")");
  }

  /// A chunk's targets in the backend's memory.
  struct Targets {
    typename B::template Buffer<std::int32_t> ids;  // (count)
    Index count;
  };
  /// f(rows part, its targets, index of its first row) over consecutive chunks of at most `chunk` rows.
  template <class F>
  static void for_each_chunk(std::vector<Index> const& rows, std::vector<std::int32_t> const& targets, Index chunk, F&& f) {
    TINYLORA_CHECK(chunk > 0, "Decoder: the chunk size must be > 0 (got ", chunk, ")");
    for (std::size_t first = 0; first < rows.size(); first += static_cast<std::size_t>(chunk)) {
      std::size_t const count = std::min(rows.size() - first, static_cast<std::size_t>(chunk));
      Targets const t{B::upload(std::span<std::int32_t const>(targets).subspan(first, count)), static_cast<Index>(count)};
      f(std::span<Index const>(rows).subspan(first, count), t, first);
    }
  }

  /// -log softmax(logits)[targets] per row, brought back in double.   logits: (count, V), returns (count)
  static std::vector<double> nll(Matrix const& logits, Targets const& t) {
    auto out = B::template zeros<double>(t.count);
    B::cross_entropy(view_of(logits), B::data(t.ids), B::data(out));
    return B::download(out);
  }

  // ---- the block's pieces
  /// RMSNorm(x) with weight g.   returns (n, d); rstd: (n) or null
  Matrix rmsnorm(Matrix const& x, typename B::template Buffer<W> const& g, float* rstd = nullptr) const {
    Matrix y = B::matrix(x.rows(), x.cols());
    B::rmsnorm(view_of(x), B::data(g), config_.rms_eps, view_of(y), rstd);
    return y;
  }

  /// Y = X W^T (+ bias) (+ the adapter's X Delta W^T).   X: (n, d_in), returns (n, d_out)
  /// When decoding, W's packed copy is used where the backend has one (same values).
  Matrix linear(int layer, Proj p, Matrix const& X, bool decoding = false) const {
    auto const& L = w_.layers[static_cast<std::size_t>(layer)];
    auto const& m = L.proj[static_cast<int>(p)];
    int const pi = static_cast<int>(p);
    TINYLORA_PROFILE_SCOPE(kGemmNames[pi]);
    Matrix Y = B::matrix(X.rows(), m.rows);
    product(view_of(X), m.view(), decoding, [&](auto const& d) -> auto const& {
      return d.proj[static_cast<std::size_t>(layer)][static_cast<std::size_t>(pi)];
    }, view_of(Y));
    if (config_.qkv_bias && pi < 3) B::add_bias(view_of(Y), B::data(L.qkv_bias[static_cast<std::size_t>(pi)]));
    if (adapters_ != nullptr) {
      TINYLORA_PROFILE_SCOPE("adapters (apply)");
      adapters_->apply(layer, p, view_of(X), view_of(Y));
    }
    return Y;
  }

  /// dX += dY W (frozen W: no gradient of its own) and the adapter's part.   dY: (n, d_out), dX: (n, d_in)
  void linear_backward(int layer, Proj p, Matrix const& X, Matrix const& dY, Matrix& dX) const {
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

  /// The attention's inputs from the residual stream: q, k = RoPE(h W_q^T), RoPE(h W_k^T), v = h W_v^T
  /// with h = RMSNorm(x).   x: (n, d); q: (n, H hd), k, v: (n, H_kv hd); h: (n, d); positions: (n)
  struct Qkv {
    Matrix h, q, k, v;
  };
  Qkv attention_inputs(int l, Matrix const& x, std::int32_t const* positions, bool decoding, float* rstd = nullptr) const {
    auto const& c = config_;
    Matrix h = rmsnorm(x, w_.layers[static_cast<std::size_t>(l)].attn_norm, rstd);  // (n, d)
    Matrix q = linear(l, Proj::q, h, decoding), k = linear(l, Proj::k, h, decoding), v = linear(l, Proj::v, h, decoding);
    B::rope(view_of(q), positions, c.n_heads, c.head_dim, c.rope_theta);
    B::rope(view_of(k), positions, c.n_kv_heads, c.head_dim, c.rope_theta);
    return {std::move(h), std::move(q), std::move(k), std::move(v)};
  }

  /// Attention(q, k, v) over the packed sequences.   returns (n, H hd)
  Matrix attend(Qkv const& in, Indices const& idx) const {
    auto const& c = config_;
    Matrix attn = B::matrix(idx.n, c.q_dim());
    B::attention(view_of(in.q), view_of(in.k), view_of(in.v), B::data(idx.offsets), idx.n_seq, c.n_heads, c.n_kv_heads,
                 c.head_dim, view_of(attn));
    return attn;
  }

  /// What the MLP half keeps for the backward: h2 = RMSNorm(x1) and its 1 / rms, gate, up (n, f).
  struct MlpInputs {
    Matrix h2, gate, up;
    typename B::template Buffer<float> rstd;  // (n)
  };

  /// act = silu(h W_gate^T) * (h W_up^T) with h = RMSNorm(x1).   x1: (n, d), returns (n, f)
  /// With `keep`, h, gate and up stay there for the backward; without, act is gate's storage.
  Matrix mlp_activation(int l, Matrix const& x1, bool decoding, MlpInputs* keep = nullptr) const {
    auto const& norm = w_.layers[static_cast<std::size_t>(l)].mlp_norm;
    if (keep == nullptr) {
      Matrix const h = rmsnorm(x1, norm);                 // (n, d)
      Matrix gate = linear(l, Proj::gate, h, decoding);    // (n, f)
      Matrix const up = linear(l, Proj::up, h, decoding);  // (n, f)
      B::swiglu(view_of(gate), view_of(up), view_of(gate));
      return gate;
    }
    keep->rstd = B::template zeros<float>(x1.rows());
    keep->h2 = rmsnorm(x1, norm, B::data(keep->rstd));
    keep->gate = linear(l, Proj::gate, keep->h2, decoding);
    keep->up = linear(l, Proj::up, keep->h2, decoding);
    Matrix act = B::matrix(x1.rows(), config_.intermediate);  // (n, f)
    B::swiglu(view_of(keep->gate), view_of(keep->up), view_of(act));
    return act;
  }

  /// The rest of block l once the attention is done: x += attn W_o^T, then x += act W_down^T with
  /// act = mlp_activation(x).   attn: (n, H hd), x: (n, d) in place
  void finish_block(int l, Matrix const& attn, Matrix& x, bool decoding) const {
    B::add(1.0f, view_of(linear(l, Proj::o, attn, decoding)), view_of(x));
    Matrix const act = mlp_activation(l, x, decoding);  // (n, f)
    B::add(1.0f, view_of(linear(l, Proj::down, act, decoding)), view_of(x));
  }

  /// x += Attention(RoPE(q), RoPE(k), v) W_o^T;  x += SwiGLU(h) W_down^T.   x: (n, d) in place
  /// With a cache, sequence s's keys and values are stored in slot slots[s] (prefill).
  void block_forward(int l, PackedBatch const& batch, Indices const& idx, Matrix& x, Cache* cache,
                     std::span<Index const> slots) const {
    TINYLORA_PROFILE_SCOPE("block glue (residual adds, cache writes)");
    Qkv const in = attention_inputs(l, x, B::data(idx.positions), false);
    if (cache != nullptr)
      for (Index s = 0; s < batch.n_seq(); ++s) {
        Index const begin = batch.offsets[s], len = batch.offsets[s + 1] - begin;
        TINYLORA_CHECK(len <= cache->capacity, "Decoder::hidden_states(): a prompt of ", len,
                       " tokens does not fit the cache capacity ", cache->capacity);
        Index const base = slots[static_cast<std::size_t>(s)] * cache->capacity;
        B::copy(view_of(in.k).row_block(begin, len), view_of(cache->k[static_cast<std::size_t>(l)]).row_block(base, len));
        B::copy(view_of(in.v).row_block(begin, len), view_of(cache->v[static_cast<std::size_t>(l)]).row_block(base, len));
      }
    finish_block(l, attend(in, idx), x, false);
  }

  /// RMSNorm(x) after every block, the whole batch in parts of about equal cost.   returns (n, d)
  Matrix hidden(PackedBatch const& batch, Cache* cache = nullptr, std::span<Index const> slots = {}) const {
    std::vector<Index> const parts = sequence_parts(batch);  // (n_parts + 1) sequence bounds
    if (parts.size() <= 2) return hidden_part(batch, cache, slots);
    Matrix y = B::matrix(batch.n_tokens(), config_.hidden);  // (n, d)
    parallel::run_parts(static_cast<Index>(parts.size()) - 1, [&](Index p) {
      Index const s0 = parts[static_cast<std::size_t>(p)], s1 = parts[static_cast<std::size_t>(p) + 1];
      Matrix const part = hidden_part(batch.slice(s0, s1), cache, cache != nullptr ? slots.subspan(s0, s1 - s0) : slots);
      B::copy(view_of(part), view_of(y).row_block(batch.offsets[s0], part.rows()));
    });
    return y;
  }

  /// hidden() of one part.   returns (n, d)
  Matrix hidden_part(PackedBatch const& batch, Cache* cache, std::span<Index const> slots) const {
    Indices const idx = upload(batch);
    Matrix x = B::matrix(idx.n, config_.hidden);  // (n, d) residual stream
    B::embedding(w_.embed.view(), B::data(idx.ids), view_of(x));
    for (int l = 0; l < config_.n_layers; ++l) block_forward(l, batch, idx, x, cache, slots);
    if (cache != nullptr)
      for (Index s = 0; s < batch.n_seq(); ++s)
        cache->length[static_cast<std::size_t>(slots[s])] = batch.offsets[s + 1] - batch.offsets[s];
    return rmsnorm(x, w_.final_norm);
  }

  /// Sequence bounds of at most B::max_parts() parts, by the forward's cost: per token every
  /// projection (~2 |W| flops) plus attention over its prefix (~4 q_dim t flops).   returns (n_parts + 1)
  std::vector<Index> sequence_parts(PackedBatch const& batch) const {
    double const per_token = 2.0 * static_cast<double>(2 * config_.hidden * config_.q_dim() + 2 * config_.hidden * config_.kv_dim() +
                                                       3 * config_.hidden * config_.intermediate);
    return parallel::balanced_ranges(batch.n_seq(), static_cast<int>(B::max_parts()), [&](Index s) {
      double const len = static_cast<double>(batch.offsets[s + 1] - batch.offsets[s]);
      return len * (per_token + 2.0 * static_cast<double>(config_.q_dim()) * len);
    });
  }

  // ---- the LM head
  /// logits = h[rows] E_head^T.   h: (n, d), returns (rows, V)
  Matrix head_forward(Matrix const& h, std::span<Index const> rows) const {
    auto const dev_rows = B::upload(rows);
    Matrix sel = B::matrix(static_cast<Index>(rows.size()), h.cols());  // (rows, d)
    B::gather_rows(view_of(h), B::data(dev_rows), view_of(sel));
    return head_of(sel, false);
  }
  /// logits = y E_head^T.   y: (m, d), returns (m, V)
  Matrix head_of(Matrix const& y, bool decoding) const {
    TINYLORA_PROFILE_SCOPE("lm head (GEMM)");
    Matrix logits = B::matrix(y.rows(), config_.vocab);
    product(view_of(y), w_.head(), decoding, [](auto const& d) -> auto const& { return d.head; }, view_of(logits));
    return logits;
  }

  /// dy[rows[i]] += dlogits[i] E_head.   dlogits: (rows, V), dy: (n, d)
  void head_backward_rows(Matrix const& dlogits, std::span<Index const> rows, Matrix& dy) const {
    Matrix dh = B::zero_matrix(dlogits.rows(), config_.hidden);  // (rows, d)
    B::head_backward(view_of(dlogits), w_.head(), view_of(dh));
    auto const dev_rows = B::upload(rows);
    B::scatter_rows(view_of(dh), B::data(dev_rows), view_of(dy), /*accumulate=*/true);
  }

  /// log softmax(h[rows] E_head^T / T)[targets], chunk by chunk.   h: (n, d), returns (rows)
  std::vector<float> logprobs_at(Matrix const& h, std::vector<Index> const& rows, std::vector<std::int32_t> const& targets,
                                 float temperature, Index chunk) const {
    TINYLORA_CHECK(temperature > 0, "Decoder: the temperature must be > 0 (got ", temperature, ")");
    std::vector<float> out;
    out.reserve(rows.size());
    for_each_chunk(rows, targets, chunk, [&](std::span<Index const> part, Targets const& t, std::size_t) {
      Matrix logits = head_forward(h, part);  // (count, V)
      if (temperature != 1.0f) B::divide(view_of(logits), temperature);
      for (double x : nll(logits, t)) out.push_back(static_cast<float>(-x));
    });
    return out;
  }

  // ---- decoding
  /// decode_step()'s logits, left in the backend's memory: rows in parts of at least kMinDecodeRows.
  /// Below that each thread would stream every weight for its few rows, and splitting each product's
  /// weights between threads is faster (measured at 32 rows on SmolLM2: 216 generated tok/s split by
  /// weights vs 175 split by rows).   returns (n_active, V)
  Matrix decode_logits(std::span<std::int32_t const> tokens, std::span<Index const> slots, Cache& cache) const {
    constexpr Index kMinDecodeRows = 64;
    Index const n = static_cast<Index>(tokens.size());
    int const threads = static_cast<int>(std::min<Index>(B::max_parts(), n / kMinDecodeRows));
    std::vector<Index> const parts = parallel::balanced_ranges(n, threads, [](Index) { return 1.0; });
    if (parts.size() <= 2) return decode_part(tokens, slots, cache);
    Matrix logits = B::matrix(n, config_.vocab);  // (n, V)
    parallel::run_parts(static_cast<Index>(parts.size()) - 1, [&](Index p) {
      Index const r0 = parts[static_cast<std::size_t>(p)], r1 = parts[static_cast<std::size_t>(p) + 1];
      Matrix const part = decode_part(tokens.subspan(r0, r1 - r0), slots.subspan(r0, r1 - r0), cache);
      B::copy(view_of(part), view_of(logits).row_block(r0, r1 - r0));
    });
    return logits;
  }

  /// One decode step of one part of the rows.   returns logits (n, V)
  Matrix decode_part(std::span<std::int32_t const> tokens, std::span<Index const> slots, Cache& cache) const {
    TINYLORA_PROFILE_SCOPE("decode step glue");
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
    Matrix x = B::matrix(n, c.hidden);  // (n, d)
    B::embedding(w_.embed.view(), B::data(dev_tokens), view_of(x));
    for (int l = 0; l < c.n_layers; ++l) {
      auto& cache_k = cache.k[static_cast<std::size_t>(l)];
      auto& cache_v = cache.v[static_cast<std::size_t>(l)];
      Qkv const in = attention_inputs(l, x, B::data(dev_positions), true);
      B::scatter_rows(view_of(in.k), B::data(dev_rows), view_of(cache_k));
      B::scatter_rows(view_of(in.v), B::data(dev_rows), view_of(cache_v));
      Matrix attn = B::matrix(n, c.q_dim());  // (n, H hd)
      B::attention_decode(view_of(in.q), view_of(cache_k), view_of(cache_v), cache.capacity, B::data(dev_lengths),
                          B::data(dev_slots), c.n_heads, c.n_kv_heads, c.head_dim, view_of(attn));
      finish_block(l, attn, x, true);
    }
    for (std::size_t i = 0; i < tokens.size(); ++i) cache.length[static_cast<std::size_t>(slots[i])] += 1;
    return head_of(rmsnorm(x, w_.final_norm), true);
  }

  /// Decode steps multiply a few rows by every weight; with fp32 weights and a backend that packs
  /// weights (B::PackedWeight: the CPU's panels, backend/cpu/packed_gemm.hpp) they use packed
  /// copies, which a general GEMM would otherwise rebuild on every call. The copies cost as much
  /// memory as the weights and are made on the first decode step.
  static constexpr bool kPanelDecode = std::is_same_v<W, float> && !std::is_void_v<PackedW>;

  struct NoPanels {};
  template <class Packed>
  struct Panels {
    std::once_flag packed;
    std::vector<std::array<Packed, kProjCount>> proj;  // (n_layers, kProjCount) as w_.layers[l].proj
    Packed head;                                       // E_head (V, d)
  };
  using DecodePanels = std::conditional_t<kPanelDecode, Panels<PackedW>, NoPanels>;

  /// Y = X W^T; in a decode step through W's packed copy, packed(decode_panels()).
  ///   X: (n, d_in), W: (d_out, d_in), Y: (n, d_out)
  template <class Packed>
  void product(ConstMatrixView<float> X, ConstMatrixView<W> Wt, bool decoding, Packed packed, MatrixView<float> Y) const {
    if constexpr (kPanelDecode) {
      if (decoding) return B::gemm_packed(X, packed(decode_panels()), Y);
    }
    B::gemm(Op::N, Op::T, 1.0f, X, Wt, 0.0f, Y);
  }

  /// The packed copies, made on first use (thread-safe: parallel decode parts may ask at once).
  DecodePanels const& decode_panels() const
    requires kPanelDecode
  {
    DecodePanels& d = *decode_panels_;
    std::call_once(d.packed, [&] {
      TINYLORA_PROFILE_SCOPE("pack weights for decoding");
      d.proj.resize(w_.layers.size());
      for (std::size_t l = 0; l < w_.layers.size(); ++l)
        for (std::size_t p = 0; p < kProjCount; ++p) d.proj[l][p] = B::pack(w_.layers[l].proj[p].view());
      d.head = B::pack(w_.head());
    });
    return d;
  }

  static constexpr char const* kGemmNames[7] = {"W_q (GEMM)", "W_k (GEMM)", "W_v (GEMM)", "W_o (GEMM)",
                                                "W_gate (GEMM)", "W_up (GEMM)", "W_down (GEMM)"};

  // ---- the backward pass
  /// What the backward needs from the forward under "recompute per layer".
  struct Activations {
    std::vector<Matrix> inputs;                 // (n_layers) block inputs, (n, d) each
    Matrix x;                                   // (n, d) the last block's output
    Matrix y;                                   // (n, d) RMSNorm(x), the LM head's input
    typename B::template Buffer<float> rstd;    // (n) the final norm's 1 / rms
  };

  Activations forward_keeping_inputs(PackedBatch const& batch) const {
    Index const n = batch.n_tokens(), d = config_.hidden;
    Activations a;
    for (int l = 0; l < config_.n_layers; ++l) a.inputs.push_back(B::matrix(n, d));
    a.x = B::matrix(n, d);
    a.y = B::matrix(n, d);
    a.rstd = B::template zeros<float>(n);
    std::vector<Index> const parts = sequence_parts(batch);  // (n_parts + 1) sequence bounds
    parallel::run_parts(static_cast<Index>(parts.size()) - 1, [&](Index p) {
      Index const s0 = parts[static_cast<std::size_t>(p)], s1 = parts[static_cast<std::size_t>(p) + 1];
      forward_keeping_inputs_rows(parts.size() <= 2 ? batch : batch.slice(s0, s1), batch.offsets[s0], a);
    });
    return a;
  }

  /// The forward of a batch whose tokens are rows [row0, row0 + n) of a's matrices.
  void forward_keeping_inputs_rows(PackedBatch const& batch, Index row0, Activations& a) const {
    Indices const idx = upload(batch);
    Index const n = idx.n;
    Matrix x = B::matrix(n, config_.hidden);  // (n, d) residual stream
    B::embedding(w_.embed.view(), B::data(idx.ids), view_of(x));
    for (int l = 0; l < config_.n_layers; ++l) {
      B::copy(view_of(x), view_of(a.inputs[static_cast<std::size_t>(l)]).row_block(row0, n));
      block_forward(l, batch, idx, x, nullptr, {});
    }
    B::copy(view_of(x), view_of(a.x).row_block(row0, n));
    Matrix const y = rmsnorm(x, w_.final_norm, B::data(a.rstd) + row0);  // (n, d)
    B::copy(view_of(y), view_of(a.y).row_block(row0, n));
  }

  /// dy: dL/dy at the final norm's output (n, d) -> back through the norm and every block.
  void backward_from(PackedBatch const& batch, Activations const& a, Matrix const& dy) const {
    Indices const idx = upload(batch);
    Matrix dx = B::zero_matrix(idx.n, config_.hidden);  // (n, d) dL/dx of the residual stream
    B::rmsnorm_backward(view_of(a.x), B::data(w_.final_norm), B::data(a.rstd), view_of(dy), view_of(dx));
    for (int l = config_.n_layers - 1; l >= 0; --l) block_backward(l, idx, a.inputs[static_cast<std::size_t>(l)], dx);
  }

  /// Recomputes block l from its input x (attention_inputs and finish_block's steps, keeping what the
  /// backward needs) and back-propagates dx (the gradient w.r.t. its output on entry, w.r.t. its
  /// input on return).   x, dx: (n, d)
  void block_backward(int l, Indices const& idx, Matrix const& x, Matrix& dx) const {
    TINYLORA_PROFILE_SCOPE("block backward glue");
    auto const& L = w_.layers[static_cast<std::size_t>(l)];
    auto const& c = config_;
    Index const n = idx.n, d = c.hidden;
    std::int32_t const* positions = B::data(idx.positions);
    // ---- forward (the same pieces as block_forward), keeping what the backward needs
    auto rstd1 = B::template zeros<float>(n);
    Qkv const in = attention_inputs(l, x, positions, false, B::data(rstd1));
    Matrix const attn = attend(in, idx);  // (n, H hd)
    Matrix x1 = x;                        // (n, d) x + attn W_o^T
    B::add(1.0f, view_of(linear(l, Proj::o, attn)), view_of(x1));
    MlpInputs m;
    Matrix const act = mlp_activation(l, x1, false, &m);  // (n, f) silu(gate) * up
    // ---- backward: x2 = x1 + down(act), x1 = x + o(attn)
    Matrix dact = B::zero_matrix(n, c.intermediate);
    linear_backward(l, Proj::down, act, dx, dact);
    Matrix dgate = B::matrix(n, c.intermediate), dup = B::matrix(n, c.intermediate);
    B::swiglu_backward(view_of(m.gate), view_of(m.up), view_of(dact), view_of(dgate), view_of(dup));
    Matrix dh2 = B::zero_matrix(n, d);
    linear_backward(l, Proj::gate, m.h2, dgate, dh2);
    linear_backward(l, Proj::up, m.h2, dup, dh2);
    B::rmsnorm_backward(view_of(x1), B::data(L.mlp_norm), B::data(m.rstd), view_of(dh2), view_of(dx));  // dx = dx1
    Matrix dattn = B::zero_matrix(n, c.q_dim());
    linear_backward(l, Proj::o, attn, dx, dattn);
    Matrix dq = B::matrix(n, c.q_dim()), dk = B::matrix(n, c.kv_dim()), dv = B::matrix(n, c.kv_dim());
    B::attention_backward(view_of(in.q), view_of(in.k), view_of(in.v), B::data(idx.offsets), idx.n_seq, c.n_heads, c.n_kv_heads,
                          c.head_dim, view_of(dattn), view_of(dq), view_of(dk), view_of(dv));
    B::rope_backward(view_of(dq), positions, c.n_heads, c.head_dim, c.rope_theta);
    B::rope_backward(view_of(dk), positions, c.n_kv_heads, c.head_dim, c.rope_theta);
    Matrix dh = B::zero_matrix(n, d);
    linear_backward(l, Proj::q, in.h, dq, dh);
    linear_backward(l, Proj::k, in.h, dk, dh);
    linear_backward(l, Proj::v, in.h, dv, dh);
    B::rmsnorm_backward(view_of(x), B::data(L.attn_norm), B::data(rstd1), view_of(dh), view_of(dx));  // dx = dx_in
  }

  ModelConfig config_;
  ModelWeights<B, P> w_;
  LinearAdapters* adapters_ = nullptr;
  mutable std::shared_ptr<DecodePanels> decode_panels_ = std::make_shared<DecodePanels>();
};

}  // namespace tinylora::model
