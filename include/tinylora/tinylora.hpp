// tinylora/tinylora.hpp: the umbrella include: the five policy axes, the adapter set, the recipe,
// SVD, randomness and result files.
#pragma once

#include "tinylora/adapters/adapters.hpp"
#include "tinylora/backend/cpu/cpu.hpp"
#include "tinylora/backend/default.hpp"
#include "tinylora/core/module.hpp"
#include "tinylora/core/rng.hpp"
#include "tinylora/core/type_list.hpp"
#include "tinylora/model/shapes.hpp"
#include "tinylora/linalg/svd.hpp"
#include "tinylora/optim/optimizers.hpp"
#include "tinylora/optim/schedule.hpp"
#include "tinylora/optim/trainable.hpp"
#include "tinylora/precision/policies.hpp"
#include "tinylora/recipe.hpp"
#include "tinylora/policies.hpp"
#include "tinylora/tying/strategies.hpp"
