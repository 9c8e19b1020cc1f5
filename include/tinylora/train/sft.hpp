// tinylora/train/sft.hpp: supervised fine-tuning of theta on question/answer pairs, the loss of the
// loss-surface report's eq. 6: prompt tokens masked, the answer and EOS supervised,
//   L(theta) = (1 / N_tok) sum_x sum_{t in T(x)} -log p_theta(y_t | x_<t),
// the token mean taken over a whole optimizer batch even when it is accumulated over micro-batches.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <vector>

#include "tinylora/data/qa.hpp"
#include "tinylora/model/adapted.hpp"
#include "tinylora/optim/schedule.hpp"
#include "tinylora/optim/trainable.hpp"
#include "tinylora/train/loop.hpp"

namespace tinylora::train {

struct SftOptions {
  Index batch_size = 4;        // examples per optimizer step
  Index micro_batch = 4;       // examples per forward/backward (memory only: never changes the result)
  Index epochs = 1;
  Index max_steps = 0;         // 0: epochs x steps per epoch
  float lr = 1e-3f;            // SFT needs 100-1000x larger updates than RL (REFERENCE.md section 6)
  double warmup_fraction = 0.05;
  double grad_clip = 1.0;      // max global norm (0: off)
  std::uint64_t seed = 0;      // data order
};

/// R: the Recipe; its optimizer updates theta, its precision rounds it.
template <IsRecipe R>
class SftTrainer {
 public:
  using Policy = model::AdaptedModel<R>;
  using O = typename R::optimizer;
  using P = typename R::precision;

  SftTrainer(Policy& policy, std::vector<data::SupervisedExample> examples, SftOptions const& o, O optimizer = {})
      : policy_(policy), examples_(std::move(examples)), o_(o),
        trainable_(optimizer, std::vector<float>(policy.theta().begin(), policy.theta().end())) {
    TINYLORA_CHECK(o.batch_size >= 1 && o.micro_batch >= 1 && o.epochs >= 1, "SftTrainer: batch_size, micro_batch and epochs must be >= 1");
    TINYLORA_CHECK(static_cast<Index>(examples_.size()) >= o.batch_size, "SftTrainer: ", examples_.size(),
                   " examples are fewer than one batch of ", o.batch_size, ". Hint: lower --batch or give more data.");
    total_ = planned_steps(examples_.size(), o.batch_size, o.epochs, o.max_steps);
    schedule_ = optim::LrSchedule::with_warmup_fraction(o.lr, o.warmup_fraction, total_);
    policy_.set_theta(trainable_.theta());
  }

  Index total_steps() const { return total_; }
  std::vector<float> theta() const { return trainable_.theta(); }
  void save(io::Checkpoint& c) { save_trainable(c, trainable_); }
  void restore(io::Checkpoint const& c) {
    restore_trainable(c, trainable_);
    policy_.set_theta(trainable_.theta());
  }

  /// The examples of step s (epoch by epoch, each in its own seeded order).
  std::vector<Index> batch_indices(Index s) const { return epoch_batch(o_.seed, 2000, examples_.size(), o_.batch_size, s); }

  /// The wall-clock split of the last step (seconds), logged under timing/ by the loop.
  Metrics const& last_timing() const { return timing_; }

  Metrics step(Index s) {
    using clock = std::chrono::steady_clock;
    auto const t0 = clock::now();
    policy_.set_enabled(true);
    policy_.set_theta(trainable_.theta());
    auto const idx = batch_indices(s);
    // The token count of the whole batch first: each micro-batch's gradient is that of its NLL sum
    // over this count, so the accumulated gradient is exactly the batch's token mean.
    Index n_tokens = 0;
    for (Index i : idx) {
      auto const& ex = examples_[static_cast<std::size_t>(i)];
      for (std::size_t t = 1; t < ex.tokens.size(); ++t) n_tokens += ex.supervised[t];
    }
    TINYLORA_CHECK(n_tokens > 0, "SftTrainer: step ", s, " has no supervised token. Hint: raise --max-length (answers are truncated first).");
    std::vector<float> grad(static_cast<std::size_t>(policy_.count()), 0.0f);  // (b)
    double sum_nll = 0;
    for (std::size_t first = 0; first < idx.size(); first += static_cast<std::size_t>(o_.micro_batch)) {
      model::PackedBatch batch;
      std::vector<std::uint8_t> mask;
      for (std::size_t i = first; i < std::min(idx.size(), first + static_cast<std::size_t>(o_.micro_batch)); ++i) {
        auto const& ex = examples_[static_cast<std::size_t>(idx[i])];
        batch.add(ex.tokens);
        mask.insert(mask.end(), ex.supervised.begin(), ex.supervised.end());
      }
      policy_.adapter_set().zero_grad();
      sum_nll += policy_.model().loss_and_backward(batch, mask, 256, n_tokens).sum_nll;
      auto const g = policy_.adapter_set().gradient();
      for (std::size_t k = 0; k < grad.size(); ++k) grad[k] += g[k];
    }
    auto const t1 = clock::now();
    double const loss = sum_nll / static_cast<double>(n_tokens);
    double const norm = o_.grad_clip > 0 ? optim::clip_global_norm(grad, o_.grad_clip) : optim::global_norm(grad);
    TINYLORA_CHECK(std::isfinite(loss) && std::isfinite(norm), "SftTrainer: step ", s, " has a non-finite loss (", loss,
                   ") or gradient norm (", norm, "). Hint: lower the learning rate; the last checkpoint is intact.");
    float const lr = schedule_.lr(s);
    trainable_.step(grad, lr);
    policy_.set_theta(trainable_.theta());
    timing_ = {{"forward_backward", std::chrono::duration<double>(t1 - t0).count()},
               {"optimizer", std::chrono::duration<double>(clock::now() - t1).count()}};
    return {{"loss", loss}, {"n_tokens", static_cast<double>(n_tokens)}, {"grad_norm", norm}, {"lr", lr}};
  }

 private:
  Policy& policy_;
  std::vector<data::SupervisedExample> examples_;
  SftOptions o_;
  optim::Trainable<P, O> trainable_;
  Index total_ = 0;
  optim::LrSchedule schedule_;
  Metrics timing_;
};

}  // namespace tinylora::train
