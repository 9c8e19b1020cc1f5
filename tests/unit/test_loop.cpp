// The step loop's probe (LoopOptions::probe, what --val-every uses): measured after every K-th step
// and after the last, stored under validation/ with NaN at the steps not measured, taken before
// the step's checkpoint so that a resumed run neither repeats nor skips a measurement.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "../support.hpp"
#include "tinylora/io/hdf5.hpp"
#include "tinylora/train/loop.hpp"

using namespace tinylora;

namespace {
/// theta = {number of steps taken}: a step's result depends on the restored state and s only.
struct CountingTrainer {
  Index fail_at = -1;  // a crash (an exception) in this step: what a killed process leaves behind
  float taken = 0;
  Index total_steps() const { return 5; }
  train::Metrics step(Index s) {
    TINYLORA_CHECK(s != fail_at, "CountingTrainer: crash at step ", s);
    taken += 1;
    return {{"step_seen", static_cast<double>(s)}};
  }
  std::vector<float> theta() const { return {taken}; }
  void save(io::Checkpoint& c) const { c.put("taken", std::span<float const>(&taken, 1)); }
  void restore(io::Checkpoint const& c) { taken = c.floats("taken").at(0); }
};
static_assert(train::Trainer<CountingTrainer>);
}  // namespace

TEST_CASE("run_steps: the probe runs after every K-th step and the last, before the checkpoint; a resumed run repeats none") {
  auto const dir = test::scratch_dir("loop_probe");
  auto const path = dir / "run.h5";
  std::vector<Index> probed;
  train::LoopOptions const o{.checkpoint_dir = dir / "ckpt",
                             .run_identity = "probe test",
                             .progress = false,
                             .probe_every = 2,
                             .probe = [&](Index s) {
                               probed.push_back(s);
                               return train::Metrics{{"pass_at_1", 0.1 * static_cast<double>(s)}};
                             }};
  {  // the first process dies in step 3 (0-based), after step 2's checkpoint
    auto file = io::ResultFile::create(path);
    {
      CountingTrainer t{.fail_at = 3};
      train::TrainLog log(file, t.total_steps(), 1);
      CHECK_THROWS_WITH_AS(train::run_steps(t, log, o), doctest::Contains("crash at step 3"), Error);
    }
    file.finalize();
  }
  CHECK(probed == std::vector<Index>{1});  // after the second step
  probed.clear();
  {  // the rerun resumes at step 3 and measures after the fourth step and the last
    auto file = io::ResultFile::open(path, io::ResultFile::Mode::ReadWrite);
    {
      CountingTrainer t;
      train::TrainLog log(file, t.total_steps(), 1);
      CHECK(train::run_steps(t, log, o) == 3);
      CHECK(t.taken == 5.0f);
    }
    file.finalize();
  }
  CHECK(probed == std::vector<Index>{3, 4});
  auto const file = io::ResultFile::open(path, io::ResultFile::Mode::ReadOnly);
  auto const v = file.read_vector<double>("validation/pass_at_1");  // (steps)
  REQUIRE(v.size() == 5);
  CHECK(std::isnan(v[0]));
  CHECK(v[1] == doctest::Approx(0.1));
  CHECK(std::isnan(v[2]));
  CHECK(v[3] == doctest::Approx(0.3));
  CHECK(v[4] == doctest::Approx(0.4));
}
