// bench/op_profile: where a W1 step (masked loss over GSM8K examples, the loss-surface workload) and a
// W2 step (TinyLoRA b = 13 forward + backward on the same batch) spend their time, per operation:
// exclusive seconds summed over threads, share, calls. Built with TINYLORA_PROFILE, so its timings
// carry the (small) cost of the scopes; the shares are what it is for.
// Usage: op_profile MODEL.gguf DATA.jsonl [n_examples=16] [max_length=512] [repeats=2]
#define TINYLORA_PROFILE 1

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "tinylora/adapters/tiny_lora.hpp"
#include "tinylora/backend/cpu/cpu.hpp"
#include "tinylora/data/qa.hpp"
#include "tinylora/model/adapted.hpp"
#include "tinylora/optim/optimizers.hpp"
#include "tinylora/precision/policies.hpp"
#include "tinylora/text/gguf_tokenizer.hpp"

using namespace tinylora;
using Clock = std::chrono::steady_clock;

namespace {
/// Runs f() `repeats` times after one untimed warm-up and prints the per-op table of those runs.
template <class F>
void run_profiled(char const* title, int repeats, double tokens, F&& f) {
  f();
  profile::Table::instance().reset();
  auto const t0 = Clock::now();
  for (int r = 0; r < repeats; ++r) f();
  double const wall = std::chrono::duration<double>(Clock::now() - t0).count() / repeats;
  auto const entries = profile::Table::instance().entries();
  double total = 0;
  for (auto const& e : entries) total += e.seconds;
  std::printf("\n%s: %.3f s per step (wall), %.0f tok/s; %.3f thread-seconds profiled per step\n", title, wall, tokens / wall,
              total / repeats);
  std::printf("| operation | s per step (all threads) | share | calls per step |\n|---|---|---|---|\n");
  for (auto const& e : entries)
    std::printf("| %s | %.3f | %.1f %% | %lld |\n", e.name.c_str(), e.seconds / repeats, 100.0 * e.seconds / total,
                e.calls / repeats);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL.gguf DATA.jsonl [n_examples=16] [max_length=512] [repeats=2]\n", argv[0]);
    return 2;
  }
  std::size_t const n_examples = argc > 3 ? std::strtoul(argv[3], nullptr, 10) : 16;
  std::size_t const max_length = argc > 4 ? std::strtoul(argv[4], nullptr, 10) : 512;
  int const repeats = argc > 5 ? std::atoi(argv[5]) : 2;
  auto const f = io::GgufFile::open(argv[1]);
  auto net = model::Decoder<backend::Cpu, precision::Fp32>::load_gguf(argv[1]);
  auto const tok = text::tokenizer_from_gguf(f);
  auto const qa = data::load_qa_jsonl(argv[2], {.limit = n_examples});
  model::PackedBatch batch;
  std::vector<std::uint8_t> mask;  // (n) answer tokens supervised
  for (auto const& ex : qa) {
    auto const s = data::make_supervised(tok, {}, ex, net.config().eos, max_length);
    batch.add(s.tokens);
    mask.insert(mask.end(), s.supervised.begin(), s.supervised.end());
  }
  double const tokens = static_cast<double>(batch.n_tokens());
  std::printf("CPU: %s [%s], compiled for [%s]\n", backend::cpu::cpu_isa().model.c_str(), backend::cpu::cpu_isa().flags().c_str(),
              backend::cpu::compiled_isa().c_str());
  std::printf("%zu GSM8K examples, %td tokens (%.0f supervised), GEMM: %s, %d OpenMP threads\n", qa.size(), batch.n_tokens(),
              static_cast<double>(std::count(mask.begin(), mask.end(), 1)), backend::cpu::blas_kernel().describe().c_str(),
              omp_get_max_threads());

  run_profiled("W1 masked loss (frozen model)", repeats, tokens, [&] { (void)net.loss(batch, mask); });

  using Paper13 = Recipe<adapters::TinyLora<adapters::Paper>, tying::Tiling, precision::Fp32, optim::AdamW, backend::Cpu>;
  model::AdaptedModel<Paper13> adapted(net, model::AdapterSpec::of_budget(13));
  adapted.set_theta(std::vector<float>(static_cast<std::size_t>(adapted.count()), 0.01f));
  run_profiled("W2 TinyLoRA b=13 loss and dL/dtheta", repeats, tokens, [&] { (void)adapted.loss_and_gradient(batch, mask); });
  return 0;
}
