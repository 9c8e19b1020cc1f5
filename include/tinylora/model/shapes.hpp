// tinylora/model/shapes.hpp: the module lists of Llama-family decoders (Llama, Mistral, Qwen2,
// SmolLM2) from their shape alone, and the shapes of the models the paper uses, so that budgets
// can be planned and tie plans drawn without loading a model.
#pragma once

#include <string>
#include <vector>

#include "tinylora/core/module.hpp"
#include "tinylora/core/tensor.hpp"

namespace tinylora {

/// The shape of a Llama-family decoder (Llama, Mistral, Qwen2, SmolLM2), enough to list modules.
struct DecoderShape {
  int n_layers = 0;
  Index hidden = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  Index head_dim = 0;
  Index intermediate = 0;
};

/// The seven projections of every block, in block order: q, k, v, o, gate, up, down.
inline std::vector<std::string> const& default_target_types() {
  static std::vector<std::string> const kTypes{"q_proj", "k_proj", "v_proj", "o_proj",
                                               "gate_proj", "up_proj", "down_proj"};
  return kTypes;
}

/// The module list of a decoder with the given shape, ordered by depth (layer, then block order).
inline ModuleList decoder_modules(DecoderShape const& s) {
  Index const q = static_cast<Index>(s.n_heads) * s.head_dim;
  Index const kv = static_cast<Index>(s.n_kv_heads) * s.head_dim;
  ModuleList out;
  for (int l = 0; l < s.n_layers; ++l) {
    std::string const attn = "model.layers." + std::to_string(l) + ".self_attn.";
    std::string const mlp = "model.layers." + std::to_string(l) + ".mlp.";
    out.push_back({attn + "q_proj", l, "q_proj", q, s.hidden});
    out.push_back({attn + "k_proj", l, "k_proj", kv, s.hidden});
    out.push_back({attn + "v_proj", l, "v_proj", kv, s.hidden});
    out.push_back({attn + "o_proj", l, "o_proj", s.hidden, q});
    out.push_back({mlp + "gate_proj", l, "gate_proj", s.intermediate, s.hidden});
    out.push_back({mlp + "up_proj", l, "up_proj", s.intermediate, s.hidden});
    out.push_back({mlp + "down_proj", l, "down_proj", s.hidden, s.intermediate});
  }
  return out;
}

/// Shapes of the models in the paper and of the project's default model.
namespace shapes {
inline constexpr DecoderShape kQwen25_7B{28, 3584, 28, 4, 128, 18944};
inline constexpr DecoderShape kQwen25_3B{36, 2048, 16, 2, 128, 11008};
inline constexpr DecoderShape kLlama3_8B{32, 4096, 32, 8, 128, 14336};
inline constexpr DecoderShape kSmolLM2_135M{30, 576, 9, 3, 64, 1536};
}  // namespace shapes

}  // namespace tinylora
