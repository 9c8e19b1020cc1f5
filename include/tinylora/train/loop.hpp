// tinylora/train/loop.hpp: what SFT and GRPO share: the step loop with its metrics log (one
// resumable HDF5 series per metric, theta's trajectory as a (steps, b) grid) and its checkpoints
// (theta's fp32 master, the optimizer's state and the step, saved atomically), so that a run
// killed at any instant resumes from its last checkpoint and writes the same metrics as a run that
// never stopped: every random draw is keyed by (seed, step), never by how far a process has got.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "tinylora/core/error.hpp"
#include "tinylora/core/rng.hpp"
#include "tinylora/io/checkpoint.hpp"
#include "tinylora/io/hdf5.hpp"
#include "tinylora/optim/trainable.hpp"

namespace tinylora::train {

/// One step's scalar metrics, in the order they are reported.
using Metrics = std::vector<std::pair<std::string, double>>;

/// A trainer the loop can drive: steps are numbered 0..total_steps()-1; step(s) must depend only on
/// the state restored from a checkpoint and on s (not on what this process ran before).
template <class T>
concept Trainer = requires(T t, T const ct, Index s, io::Checkpoint& out, io::Checkpoint const& in) {
  { ct.total_steps() } -> std::convertible_to<Index>;
  { t.step(s) } -> std::same_as<Metrics>;
  { ct.theta() } -> std::convertible_to<std::vector<float>>;
  t.save(out);
  t.restore(in);
};

/// The metrics of a run in its HDF5 file: `<prefix>metrics/<name>` (steps) and `<prefix>theta`
/// (steps, b), each a resumable grid whose point s is written (and flushed) when step s finishes;
/// and the wall-clock split of each step, `<prefix>timing/<name>` in seconds (steps): the one part
/// of a run that a rerun does not reproduce (tests/scripts/compare_h5.py skips it).
class TrainLog {
 public:
  TrainLog(io::ResultFile& file, Index total_steps, Index b, std::string prefix = "")
      : file_(file), steps_(static_cast<std::size_t>(total_steps)), prefix_(std::move(prefix)) {
    theta_.emplace(file_.resumable(prefix_ + "theta", {steps_, static_cast<std::size_t>(b)}));
  }

  void record(Index step, Metrics const& metrics, std::vector<float> const& theta) {
    for (auto const& [name, value] : metrics) series(name).store(static_cast<std::size_t>(step), value);
    TINYLORA_CHECK(theta.size() * steps_ == theta_->size(), "TrainLog::record(): theta has ", theta.size(),
                   " values, the log was made for ", theta_->size() / steps_);
    for (std::size_t k = 0; k < theta.size(); ++k) theta_->store(static_cast<std::size_t>(step) * theta.size() + k, theta[k]);
  }

  void record_timing(Index step, Metrics const& seconds) {
    for (auto const& [name, value] : seconds) series("timing/" + name, "").store(static_cast<std::size_t>(step), value);
  }

  /// A measurement taken after some steps only (LoopOptions::probe): `<prefix>validation/<name>`
  /// (steps), NaN at the steps not measured.
  void record_probe(Index step, Metrics const& values) {
    for (auto const& [name, value] : values) series(name, "validation/").store(static_cast<std::size_t>(step), value);
  }

 private:
  io::ResumableGrid& series(std::string const& name, std::string const& folder = "metrics/") {
    auto it = series_.find(folder + name);
    if (it == series_.end()) it = series_.emplace(folder + name, file_.resumable(prefix_ + folder + name, {steps_})).first;
    return it->second;
  }

  io::ResultFile& file_;
  std::size_t steps_;
  std::string prefix_;
  std::optional<io::ResumableGrid> theta_;
  std::map<std::string, io::ResumableGrid> series_;
};

/// The items of step s when n items are read `batch` at a time, epoch after epoch, each epoch in
/// its own seeded permutation (Fisher-Yates keyed by (seed, stream_base + epoch)): a step's data
/// depends on (seed, s) alone, so a resumed run reads what an uninterrupted one would.
/// A permutation of 0..n-1 (Fisher-Yates keyed by (seed, data stream `stream`)).
inline std::vector<Index> seeded_permutation(std::uint64_t seed, std::uint64_t stream, std::size_t n) {
  std::vector<Index> order(n);
  std::iota(order.begin(), order.end(), Index{0});
  CounterRng const rng(seed, streams::of(streams::kData, stream));
  for (std::size_t i = n - 1; i > 0 && n > 0; --i) std::swap(order[i], order[rng.bits64(i) % (i + 1)]);
  return order;
}

inline std::vector<Index> epoch_batch(std::uint64_t seed, std::uint64_t stream_base, std::size_t n, Index batch, Index s) {
  Index const steps_per_epoch = static_cast<Index>(n) / batch;
  TINYLORA_CHECK(steps_per_epoch >= 1, "epoch_batch(): ", n, " items do not fill one batch of ", batch);
  Index const epoch = s / steps_per_epoch, pos = s % steps_per_epoch;
  auto const order = seeded_permutation(seed, stream_base + static_cast<std::uint64_t>(epoch), n);
  return {order.begin() + pos * batch, order.begin() + (pos + 1) * batch};
}

/// Steps of a run over n items, `batch` per step: whole batches only, `epochs` times, capped by
/// max_steps when it is > 0.
inline Index planned_steps(std::size_t n, Index batch, Index epochs, Index max_steps) {
  Index const all = static_cast<Index>(n) / batch * epochs;
  return max_steps > 0 ? std::min(max_steps, all) : all;
}

/// theta's fp32 master and the optimizer's state into a checkpoint, and back.
template <class P, class O>
void save_trainable(io::Checkpoint& c, optim::Trainable<P, O>& t) {
  c.put("theta_master", std::span<float const>(t.master()));
  c.put_i64("optimizer/step", t.state().step);
  for (auto const& [name, buffer] : t.state().buffers()) c.put("optimizer/" + name, std::span<float const>(*buffer));
}

template <class P, class O>
void restore_trainable(io::Checkpoint const& c, optim::Trainable<P, O>& t) {
  auto master = c.floats("theta_master");
  TINYLORA_CHECK(master.size() == t.master().size(), "restore_trainable(): the checkpoint's theta has ", master.size(),
                 " values, this run's has ", t.master().size(), ". Hint: the checkpoint folder belongs to another run.");
  t.set_master(std::move(master));
  t.state().step = c.i64("optimizer/step");
  for (auto const& [name, buffer] : t.state().buffers()) {
    auto values = c.floats("optimizer/" + name);
    TINYLORA_CHECK(values.size() == buffer->size(), "restore_trainable(): optimizer buffer '", name, "' has ", values.size(),
                   " values (expected ", buffer->size(), ")");
    *buffer = std::move(values);
  }
}

struct LoopOptions {
  std::filesystem::path checkpoint_dir;  // empty: no checkpoints (and no resume)
  Index checkpoint_every = 1;            // steps between checkpoints (and after the last step)
  std::size_t keep_last = 3;
  std::string run_identity;              // stored in every checkpoint; a mismatch refuses to resume
  Index die_at_step = -1;                // testing: SIGKILL ourselves after step s is logged, before its checkpoint
  bool progress = true;
  // Every probe_every steps (and after the last), probe(s) measures the model as it stands after
  // step s (e.g. greedy pass@1 on a validation slice); the log keeps it under validation/. It runs
  // before the step's checkpoint, so a resumed run measures what an uninterrupted one would.
  Index probe_every = 0;  // 0: no probe
  std::function<Metrics(Index)> probe{};
};

/// Runs the steps not yet covered by the newest checkpoint; returns the first step run this time.
template <Trainer T>
Index run_steps(T& trainer, TrainLog& log, LoopOptions const& o) {
  Index first = 0;
  std::optional<io::CheckpointStore> store;
  if (!o.checkpoint_dir.empty()) {
    store.emplace(o.checkpoint_dir, o.keep_last);
    if (auto latest = store->load_latest()) {
      auto const& [step, c] = *latest;
      TINYLORA_CHECK(c.string("run_identity") == o.run_identity, "run_steps(): the checkpoints in '", o.checkpoint_dir.string(),
                     "' belong to a run with other options or files. Hint: give another output/checkpoint folder to start a new run.");
      trainer.restore(c);
      first = step;
      if (o.progress) std::printf("resuming from the checkpoint after step %td (of %td)\n", step, trainer.total_steps());
    }
  }
  Index const total = trainer.total_steps();
  for (Index s = first; s < total; ++s) {
    auto const start = std::chrono::steady_clock::now();
    Metrics const m = trainer.step(s);
    for (auto const& [name, value] : m)
      TINYLORA_CHECK(std::isfinite(value), "run_steps(): step ", s, " produced a non-finite ", name, " (", value,
                     "). Nothing after the last checkpoint was kept. Hint: lower the learning rate or enable gradient clipping.");
    log.record(s, m, trainer.theta());
    double const seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    Metrics timing{{"step", seconds}};
    if constexpr (requires { trainer.last_timing(); }) timing.insert(timing.end(), trainer.last_timing().begin(), trainer.last_timing().end());
    log.record_timing(s, timing);
    if (o.progress) {
      std::printf("[step %td/%td]", s + 1, total);
      for (auto const& [name, value] : m) std::printf(" %s=%.5g", name.c_str(), value);
      std::printf(" (%.1f s)\n", seconds);
      std::fflush(stdout);
    }
    if (o.probe && o.probe_every > 0 && ((s + 1) % o.probe_every == 0 || s + 1 == total)) {
      Metrics const p = o.probe(s);
      log.record_probe(s, p);
      if (o.progress) {
        std::printf("[validation after step %td]", s + 1);
        for (auto const& [name, value] : p) std::printf(" %s=%.5g", name.c_str(), value);
        std::printf("\n");
        std::fflush(stdout);
      }
    }
    if (s == o.die_at_step) std::raise(SIGKILL);
    if (store && ((s + 1) % o.checkpoint_every == 0 || s + 1 == total)) {
      io::Checkpoint c;
      c.put_string("run_identity", o.run_identity);
      trainer.save(c);
      store->save(s + 1, c);
    }
  }
  return first;
}

/// The cell a sweep picks: the highest validation score; among cells tied on it (small validation
/// sets often tie, e.g. all at 0), the highest tie-break score (the sweep uses the mean training
/// reward of each cell's last quarter of steps); then the first. NaN scores never win.
inline std::size_t select_on_validation(std::span<double const> validation, std::span<double const> tie_break) {
  TINYLORA_CHECK(!validation.empty() && validation.size() == tie_break.size(), "select_on_validation(): ", validation.size(),
                 " validation scores and ", tie_break.size(), " tie-break scores (expected as many, at least one)");
  auto const better = [](double a, double b) { return !std::isnan(a) && (std::isnan(b) || a > b); };
  std::size_t best = 0;
  for (std::size_t c = 1; c < validation.size(); ++c) {
    if (better(validation[c], validation[best])) best = c;
    else if (validation[c] == validation[best] && better(tie_break[c], tie_break[best])) best = c;
  }
  return best;
}

/// The run identity check shared by the experiments: a result file made with other options is
/// never mixed with this run's; a fresh one records the identity.
inline void check_run_identity(io::ResultFile& file, std::string const& identity, std::string const& program, std::string const& path) {
  if (file.has_attr("/", "run_identity")) {
    TINYLORA_CHECK(file.get_attr<std::string>("/", "run_identity") == identity, program, ": '", path,
                   "' holds a run made with other options or files; give another --out to start a new one");
  } else {
    file.set_attr("/", "run_identity", identity);
  }
}

}  // namespace tinylora::train
