// tinylora/train/evaluate.hpp: greedy pass@1 on a question/answer dataset, the paper's accuracy
// metric: each question through the chat template, greedy decoding to a stop token, the final answer
// extracted by a rule and matched exactly against GSM8K's "#### <answer>"; optionally also G sampled
// completions per question at temperature T, scored the same way, for pass@k (Chen et al. 2021's
// unbiased estimator); and the HDF5 record of it.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "tinylora/data/answer.hpp"
#include "tinylora/data/qa.hpp"
#include "tinylora/io/hdf5.hpp"
#include "tinylora/model/generate.hpp"
#include "tinylora/text/tokenizer.hpp"

namespace tinylora::train {

/// The token ids that end a chat completion: the model's EOS (the tokenizer's when the model
/// config has none) and, when the tokenizer has them, "<|im_end|>" and "<|endoftext|>"
/// (deduplicated, in that order).
inline std::vector<std::int32_t> chat_stop_ids(text::Tokenizer const& tok, model::ModelConfig const& c) {
  std::vector<std::int32_t> out;
  auto const add = [&](std::int32_t id) {
    if (id >= 0 && std::find(out.begin(), out.end(), id) == out.end()) out.push_back(id);
  };
  add(c.eos >= 0 ? c.eos : tok.eos_id());
  for (char const* marker : {"<|im_end|>", "<|endoftext|>"})
    if (auto const id = tok.find_token(marker)) add(*id);
  return out;
}

/// The prompt format of a model: its own ChatML template (and default system prompt) when the
/// tokenizer carries one, else SmolLM2's; the instruction appended to each question (default: the
/// experiments' "Solve the problem step by step. ... '#### <number>'."; empty: the bare question).
inline data::PromptFormat prompt_format_for(text::Tokenizer const& tok, std::string instruction = data::kDefaultInstruction) {
  data::PromptFormat f;
  f.instruction = std::move(instruction);
  if (tok.chat_template().find("<|im_start|>") != std::string::npos) f.chat = text::ChatTemplate::from_jinja(tok.chat_template());
  return f;
}

struct EvalOptions {
  Index batch_size = 16;          // prompts generated together
  Index max_new_tokens = 256;
  data::ExtractRule rule = data::ExtractRule::PaperFork;
  data::PromptFormat format{};
  bool keep_completions = false;  // per-example text in the result
  bool progress = false;          // a line per batch on stdout
  std::optional<std::vector<std::int32_t>> stop_ids;  // default: chat_stop_ids(tok, model config)
  Index samples = 0;              // G sampled completions per example besides the greedy one (0: none)
  float temperature = 1.0f;       // of the sampled completions
  std::uint64_t seed = 0;         // of the sampled completions: example i's sample g draws as sequence i G + g
};

/// One scored example. The completion text is the generated tokens without the final stop token,
/// special tokens skipped; n_tokens counts every generated token, the stop token included.
struct EvalExample {
  std::string completion;
  std::string predicted;  // the extracted answer ("" when the rule found none)
  std::string reference;  // gsm8k_reference_answer(example.answer)
  bool correct = false;
  Index n_tokens = 0;
  bool stopped = false;   // ended at a stop token (else at max_new_tokens)
  std::vector<std::int32_t> tokens;  // (n_tokens) the generated ids
};

struct EvalResult {
  Index n = 0, n_correct = 0;
  double mean_tokens = 0;   // mean completion length in tokens (stop token included)
  double seconds = 0;       // wall time of the evaluation
  double accuracy() const { return n > 0 ? static_cast<double>(n_correct) / static_cast<double>(n) : 0.0; }
  std::vector<EvalExample> examples;  // (n) filled when keep_completions
  std::vector<std::uint8_t> correct;  // (n) always filled
  // sampled completions (when samples > 0)
  Index samples = 0;
  float temperature = 1.0f;
  std::uint64_t seed = 0;
  std::vector<std::int32_t> correct_samples;  // (n) how many of the G samples are correct
  double sample_mean_tokens = 0;
  std::vector<std::string> sample_completions;  // (n G) example-major, filled when keep_completions

  /// pass@k from G samples per example: the mean over examples of 1 - C(G - c, k) / C(G, k)
  /// (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1), k <= G; pass@G
  /// is the fraction of examples with a correct sample, pass@1 the mean fraction of correct samples.
  double pass_at(Index k) const {
    TINYLORA_CHECK(samples >= 1 && k >= 1 && k <= samples, "EvalResult::pass_at(): k = ", k, " needs 1 <= k <= G = ", samples,
                   " samples per example. Hint: evaluate with samples >= k.");
    double sum = 0;
    for (std::int32_t c : correct_samples) {
      double miss = 1;  // C(G - c, k) / C(G, k) = prod_{i = G - c + 1}^{G} (1 - k / i)
      if (static_cast<Index>(c) > samples - k) miss = 0;
      else
        for (Index i = samples - c + 1; i <= samples; ++i) miss *= 1.0 - static_cast<double>(k) / static_cast<double>(i);
      sum += 1.0 - miss;
    }
    return correct_samples.empty() ? 0.0 : sum / static_cast<double>(correct_samples.size());
  }
};

/// Scores one completion against a dataset example under `rule`; exactly the GRPO reward:
/// correct == (data::exact_match_reward(completion, reference, rule) == 1).
inline EvalExample score_completion(std::string completion, data::QaExample const& example, data::ExtractRule rule) {
  EvalExample e;
  e.reference = data::gsm8k_reference_answer(example.answer);
  e.predicted = data::extract_answer(completion, rule).value_or("");
  e.correct = data::exact_match_reward(completion, e.reference, rule) == 1.0;
  e.completion = std::move(completion);
  return e;
}

/// Greedy pass@1: for each example, the prompt rendered through the chat template, greedy decoding
/// to a stop id or max_new_tokens, the answer extracted with `rule` and compared with
/// data::gsm8k_reference_answer(example.answer) by data::answers_match. The model is used as it is
/// (with whatever adapter is plugged in). Batching never changes the result: each prompt is decoded
/// in its own cache slot.
template <class B, class P>
EvalResult evaluate(model::Decoder<B, P> const& m, text::Tokenizer const& tok, std::vector<data::QaExample> const& examples,
                    EvalOptions const& o) {
  TINYLORA_CHECK(o.batch_size >= 1, "evaluate(): batch_size must be >= 1 (got ", o.batch_size, "). Hint: use --batch 1 or more.");
  TINYLORA_CHECK(o.max_new_tokens >= 1, "evaluate(): max_new_tokens must be >= 1 (got ", o.max_new_tokens,
                 "). Hint: a completion needs room for its answer; the paper's setting is 256 or more.");
  model::GenerationOptions g;
  g.max_new_tokens = o.max_new_tokens;
  g.n_samples = 1;
  g.stop_ids = o.stop_ids ? *o.stop_ids : chat_stop_ids(tok, m.config());
  g.sampling.greedy = true;

  TINYLORA_CHECK(o.samples >= 0 && (o.samples == 0 || o.temperature > 0), "evaluate(): samples must be >= 0 and the temperature > 0 (got ",
                 o.samples, ", ", o.temperature, ")");
  model::GenerationOptions sampled = g;
  sampled.n_samples = std::max<Index>(1, o.samples);
  sampled.sampling.greedy = false;
  sampled.sampling.temperature = o.temperature;
  sampled.sampling.seed = o.seed;

  auto const start = std::chrono::steady_clock::now();
  EvalResult r;
  r.n = static_cast<Index>(examples.size());
  r.correct.assign(examples.size(), 0);
  r.samples = o.samples;
  r.temperature = o.temperature;
  r.seed = o.seed;
  if (o.samples > 0) r.correct_samples.assign(examples.size(), 0);
  double sample_tokens = 0;
  double total_tokens = 0;
  std::size_t const batch = static_cast<std::size_t>(o.batch_size);
  std::size_t const n_batches = (examples.size() + batch - 1) / batch;
  for (std::size_t first = 0; first < examples.size(); first += batch) {
    std::size_t const last = std::min(examples.size(), first + batch);
    std::vector<std::vector<std::int32_t>> prompts;  // (last - first) token ids each
    for (std::size_t i = first; i < last; ++i) prompts.push_back(tok.encode(data::render_prompt(o.format, examples[i].question), true));
    auto const completions = model::generate(m, prompts, g);  // prompt-major, one sample each
    for (std::size_t k = 0; k < completions.size(); ++k) {
      auto const& c = completions[k];
      std::size_t const i = first + k;
      std::size_t const n_text = c.tokens.size() - (c.stopped ? 1 : 0);
      auto const body = std::span<std::int32_t const>(c.tokens).first(n_text);
      EvalExample e = score_completion(tok.decode(body, true), examples[i], o.rule);
      e.n_tokens = static_cast<Index>(c.tokens.size());
      e.stopped = c.stopped;
      e.tokens = c.tokens;
      total_tokens += static_cast<double>(e.n_tokens);
      r.correct[i] = e.correct ? 1 : 0;
      r.n_correct += e.correct ? 1 : 0;
      if (o.keep_completions) r.examples.push_back(std::move(e));
    }
    if (o.samples > 0) {
      sampled.first_sequence = static_cast<std::uint64_t>(first) * static_cast<std::uint64_t>(o.samples);
      for (auto const& c : model::generate(m, prompts, sampled)) {  // prompt-major, G each
        std::size_t const n_text = c.tokens.size() - (c.stopped ? 1 : 0);
        auto const body = std::span<std::int32_t const>(c.tokens).first(n_text);
        std::size_t const i = first + static_cast<std::size_t>(c.prompt);
        auto e = score_completion(tok.decode(body, true), examples[i], o.rule);
        r.correct_samples[i] += e.correct ? 1 : 0;
        if (o.keep_completions) r.sample_completions.push_back(std::move(e.completion));
        sample_tokens += static_cast<double>(c.tokens.size());
      }
    }
    if (o.progress) {
      double const elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf("[batch %zu/%zu] %zu examples, %td correct, %.0f tokens, %.1f tokens/s\n", first / batch + 1, n_batches, last,
                  r.n_correct, total_tokens, elapsed > 0 ? total_tokens / elapsed : 0.0);
      std::fflush(stdout);
    }
  }
  r.mean_tokens = r.n > 0 ? total_tokens / static_cast<double>(r.n) : 0.0;
  r.sample_mean_tokens = r.n > 0 && o.samples > 0 ? sample_tokens / static_cast<double>(r.n * o.samples) : 0.0;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

/// Writes a result under `group` of an HDF5 file: attrs n, n_correct, accuracy, mean_tokens, seconds;
/// dataset correct (n, uint8); and when kept, string datasets completions/predicted/reference with
/// n_tokens (n, int64) and stopped (n, uint8); with samples, dataset correct_samples (n, int32) (and
/// when kept, sample_completions (n G), example-major) and
/// attrs samples, temperature, sample_seed, sample_mean_tokens, pass_at_1 (sampled) and
/// pass_at_<G>. The attributes come last, so a group that has "accuracy" is complete.
inline void write_eval(io::ResultFile& f, std::string const& group, EvalResult const& r) {
  TINYLORA_CHECK(r.correct.size() == static_cast<std::size_t>(r.n), "write_eval(): result has ", r.correct.size(),
                 " correctness flags for n = ", r.n, ". Hint: write the EvalResult that evaluate() returned.");
  TINYLORA_CHECK(r.examples.empty() || r.examples.size() == static_cast<std::size_t>(r.n), "write_eval(): result keeps ",
                 r.examples.size(), " examples for n = ", r.n, " (expected 0 or n)");
  f.create_group(group);
  f.write(group + "/correct", r.correct);
  if (!r.examples.empty()) {
    std::vector<std::string> completions, predicted, reference;
    std::vector<std::int64_t> n_tokens;
    std::vector<std::uint8_t> stopped;
    for (auto const& e : r.examples) {
      completions.push_back(e.completion);
      predicted.push_back(e.predicted);
      reference.push_back(e.reference);
      n_tokens.push_back(static_cast<std::int64_t>(e.n_tokens));
      stopped.push_back(e.stopped ? 1 : 0);
    }
    f.write_strings(group + "/completions", completions);
    f.write_strings(group + "/predicted", predicted);
    f.write_strings(group + "/reference", reference);
    f.write(group + "/n_tokens", n_tokens);
    f.write(group + "/stopped", stopped);
  }
  if (r.samples > 0) {
    f.write(group + "/correct_samples", r.correct_samples);
    if (!r.sample_completions.empty()) f.write_strings(group + "/sample_completions", r.sample_completions);
    f.set_attr(group, "samples", static_cast<std::int64_t>(r.samples));
    f.set_attr(group, "temperature", static_cast<double>(r.temperature));
    f.set_attr(group, "sample_seed", static_cast<std::int64_t>(r.seed));
    f.set_attr(group, "sample_mean_tokens", r.sample_mean_tokens);
    f.set_attr(group, "pass_at_1", r.pass_at(1));
    f.set_attr(group, "pass_at_" + std::to_string(r.samples), r.pass_at(r.samples));
  }
  f.set_attr(group, "n", static_cast<std::int64_t>(r.n));
  f.set_attr(group, "n_correct", static_cast<std::int64_t>(r.n_correct));
  f.set_attr(group, "mean_tokens", r.mean_tokens);
  f.set_attr(group, "seconds", r.seconds);
  f.set_attr(group, "accuracy", r.accuracy());
}

}  // namespace tinylora::train
