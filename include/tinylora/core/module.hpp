// tinylora/core/module.hpp: what tie strategies and adapters know about an adapted linear module:
// its name, its layer, its type within the block and its shape. Which modules a model family has
// (and the shapes of the paper's models) is model/shapes.hpp's business.
#pragma once

#include <string>
#include <vector>

#include "tinylora/core/tensor.hpp"

namespace tinylora {

/// One adapted linear module y = W x, W: (d_out, d_in), in model order.
struct ModuleInfo {
  std::string name;  // e.g. "model.layers.3.self_attn.q_proj"
  int layer = 0;     // decoder block index
  std::string type;  // e.g. "q_proj": modules of one type play the same role in every block
  Index d_out = 0;
  Index d_in = 0;
};

using ModuleList = std::vector<ModuleInfo>;

}  // namespace tinylora
