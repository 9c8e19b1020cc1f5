// tinylora/adapters/adapters.hpp: every adapter kind and the tie-aware AdapterSet, in one include.
#pragma once

#include "tinylora/adapters/adapter_set.hpp"
#include "tinylora/adapters/full.hpp"
#include "tinylora/adapters/lora.hpp"
#include "tinylora/adapters/lora_xs.hpp"
#include "tinylora/adapters/plan.hpp"
#include "tinylora/adapters/tiny_lora.hpp"
