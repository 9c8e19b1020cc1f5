// tinylora/policies.hpp: the registry of policy models, one type list per axis. The recipe matrix
// (every experiment built and run with each model of each axis, tests/CMakeLists.txt) and the
// experiments that dispatch on a recorded recipe read these lists, so a new adapter kind or tie
// strategy is one new file plus one entry here, and the matrix grows with it.
#pragma once

#include "tinylora/adapters/adapters.hpp"
#include "tinylora/core/type_list.hpp"
#include "tinylora/optim/optimizers.hpp"
#include "tinylora/precision/policies.hpp"
#include "tinylora/tying/strategies.hpp"

namespace tinylora::policies {

using AdapterKinds = TypeList<adapters::TinyLora<adapters::Paper>, adapters::TinyLora<adapters::Reference>,
                              adapters::TinyLora<adapters::Peft>, adapters::TinyLora<adapters::Fork>, adapters::LoraXs, adapters::Lora,
                              adapters::Full>;
using TieStrategies = TypeList<tying::Tiling, tying::Structured, tying::Untied, tying::All, tying::PeftRatio>;
using PrecisionPolicies = TypeList<precision::Fp32, precision::Bf16, precision::Fp16>;
using Optimizers = TypeList<optim::Sgd, optim::Adam, optim::AdamW>;

}  // namespace tinylora::policies
