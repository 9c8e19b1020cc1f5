// tinylora/model/config.hpp: the hyper-parameters of a Llama-family decoder (Llama, Mistral,
// Qwen2, SmolLM2), read from GGUF metadata or a Hugging Face config.json, validated once here so the
// model code can trust them.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "tinylora/core/error.hpp"
#include "tinylora/core/module.hpp"
#include "tinylora/core/tensor.hpp"
#include "tinylora/io/gguf.hpp"
#include "tinylora/model/shapes.hpp"

namespace tinylora::model {

struct ModelConfig {
  std::string architecture;  // "llama", "mistral", "qwen2"
  int n_layers = 0;
  Index hidden = 0;          // d
  int n_heads = 0;           // H
  int n_kv_heads = 0;        // H_kv (grouped-query attention: H % H_kv == 0)
  Index head_dim = 0;        // hd
  Index intermediate = 0;    // f
  Index vocab = 0;           // V
  float rms_eps = 1e-5f;
  float rope_theta = 10000.0f;
  Index max_positions = 2048;
  bool tied_embeddings = false;  // LM head = embedding table (SmolLM2)
  bool qkv_bias = false;         // q/k/v projections have biases (Qwen2)
  std::int32_t bos = -1, eos = -1, pad = -1;

  Index q_dim() const { return static_cast<Index>(n_heads) * head_dim; }
  Index kv_dim() const { return static_cast<Index>(n_kv_heads) * head_dim; }

  DecoderShape shape() const { return {n_layers, hidden, n_heads, n_kv_heads, head_dim, intermediate}; }

  void validate(std::string const& source) const {
    auto need = [&](bool ok, char const* what) {
      TINYLORA_CHECK(ok, "ModelConfig::validate(): ", source, ": ", what,
                     ". Hint: the file may be damaged or not a Llama-family decoder.");
    };
    need(architecture == "llama" || architecture == "mistral" || architecture == "qwen2",
         ("unsupported architecture '" + architecture + "' (expected llama, mistral or qwen2)").c_str());
    need(n_layers > 0 && n_layers <= 1024, "block count out of range");
    need(hidden > 0 && n_heads > 0 && n_kv_heads > 0 && head_dim > 0, "non-positive width or head count");
    need(n_heads % n_kv_heads == 0, "head count is not a multiple of the key/value head count");
    need(head_dim % 2 == 0, "head dimension must be even for RoPE");
    need(intermediate > 0 && vocab > 0, "non-positive feed-forward width or vocabulary");
    need(std::isfinite(rms_eps) && std::isfinite(rope_theta) && rms_eps > 0 && rope_theta > 0, "non-positive or non-finite RMSNorm epsilon or RoPE base");
  }
};

/// Reads the config of a GGUF file (keys "<arch>.block_count", "<arch>.embedding_length", ...).
inline ModelConfig config_from_gguf(io::GgufFile const& f) {
  ModelConfig c;
  c.architecture = f.get<std::string>("general.architecture");
  std::string const a = c.architecture + ".";
  TINYLORA_CHECK(c.architecture == "llama" || c.architecture == "mistral" || c.architecture == "qwen2",
                 "config_from_gguf(): '", f.path().string(), "' is a '", c.architecture,
                 "' model; tinylora runs llama, mistral and qwen2 decoders");
  c.n_layers = f.get<int>(a + "block_count");
  c.hidden = f.get<Index>(a + "embedding_length");
  c.n_heads = f.get<int>(a + "attention.head_count");
  c.n_kv_heads = f.get_or<int>(a + "attention.head_count_kv", c.n_heads);
  c.head_dim = f.get_or<Index>(a + "attention.key_length", c.n_heads > 0 ? c.hidden / c.n_heads : 0);  // validate() refuses 0 heads
  c.intermediate = f.get<Index>(a + "feed_forward_length");
  c.rms_eps = f.get<float>(a + "attention.layer_norm_rms_epsilon");
  c.rope_theta = f.get_or<float>(a + "rope.freq_base", 10000.0f);
  c.max_positions = f.get_or<Index>(a + "context_length", 2048);
  c.tied_embeddings = !f.has_tensor("output.weight");
  c.qkv_bias = f.has_tensor("blk.0.attn_q.bias");
  c.bos = f.get_or<std::int32_t>("tokenizer.ggml.bos_token_id", -1);
  c.eos = f.get_or<std::int32_t>("tokenizer.ggml.eos_token_id", -1);
  c.pad = f.get_or<std::int32_t>("tokenizer.ggml.padding_token_id", -1);
  c.vocab = f.tensor("token_embd.weight").rows();
  c.validate(f.path().string());
  return c;
}

}  // namespace tinylora::model
