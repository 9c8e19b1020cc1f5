// Greedy pass@1 evaluation (train/evaluate.hpp) on the tiny random Llama fixture: completions equal a
// hand-rolled greedy loop over full-sequence logits (no KV cache), batching changes nothing, stop ids
// end a completion, scoring follows the reference answers, adapters are honoured, and the HDF5 record
// reads back; sampled completions for pass@k (the estimator hand-computed, draws independent of the
// batching, counts that follow the references). chat_stop_ids on the fixture and on the real SmolLM2 GGUF.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "../model_support.hpp"
#include "../support.hpp"
#include "tinylora/adapters/adapters.hpp"
#include "tinylora/backend/cpu/cpu.hpp"
#include "tinylora/model/adapted.hpp"
#include "tinylora/optim/optimizers.hpp"
#include "tinylora/precision/policies.hpp"
#include "tinylora/text/load.hpp"
#include "tinylora/train/evaluate.hpp"
#include "tinylora/tying/strategies.hpp"

using namespace tinylora;
using Model = model::Decoder<backend::Cpu, precision::Fp32>;

namespace {

std::filesystem::path tiny_path() { return test::source_dir() / "tests/reference/fixtures/tiny_llama"; }

/// The first n questions of the committed arithmetic test split.
std::vector<data::QaExample> arith_questions(std::size_t n) {
  return data::load_qa_jsonl(test::source_dir() / "data/arith/test.jsonl", {.limit = n});
}

struct Greedy {
  std::vector<std::int32_t> tokens;  // generated ids, the stop id included when hit
  bool stopped = false;
  float min_margin = std::numeric_limits<float>::infinity();  // smallest top-1 minus top-2 logit gap
};

/// The reference: the prompt written out through the SmolLM2 ChatML template by hand, then at every
/// step the full sequence re-run through Decoder::logits (no KV cache) and the argmax appended.
Greedy greedy_reference(Model const& m, text::Tokenizer const& tok, std::string const& question, Index max_new,
                        std::vector<std::int32_t> const& stops) {
  std::string const prompt = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                             "<|im_start|>user\n" + question + "\n\n" + data::kDefaultInstruction +
                             "<|im_end|>\n<|im_start|>assistant\n";
  std::vector<std::int32_t> seq = tok.encode(prompt, true);
  Greedy g;
  for (Index step = 0; step < max_new; ++step) {
    model::PackedBatch b;
    b.add(seq);
    std::vector<Index> const rows{b.n_tokens() - 1};
    HostMatrix const logits = m.logits(b, rows);  // (1, V)
    std::int32_t best = 0;
    for (Index j = 1; j < logits.cols(); ++j)
      if (logits(0, j) > logits(0, best)) best = static_cast<std::int32_t>(j);
    float second = -std::numeric_limits<float>::infinity();
    for (Index j = 0; j < logits.cols(); ++j)
      if (j != best) second = std::max(second, logits(0, j));
    g.min_margin = std::min(g.min_margin, logits(0, best) - second);
    g.tokens.push_back(best);
    seq.push_back(best);
    if (std::find(stops.begin(), stops.end(), best) != stops.end()) {
      g.stopped = true;
      break;
    }
  }
  return g;
}

/// The text evaluate() should report: the tokens without the final stop id, special tokens skipped.
std::string completion_text(text::Tokenizer const& tok, Greedy const& g) {
  std::vector<std::int32_t> body = g.tokens;
  if (g.stopped) body.pop_back();
  return tok.decode(body, true);
}

}  // namespace

TEST_CASE("chat_stop_ids: the model's EOS, then <|im_end|> and <|endoftext|>, deduplicated") {
  auto const tok = text::load_tokenizer(tiny_path());
  auto const net = Model::load(tiny_path());
  // The fixture: eos_token_id 2 = <|im_end|>, <|endoftext|> = 0 (tokenizer.json added tokens).
  CHECK(net.config().eos == 2);
  CHECK(train::chat_stop_ids(tok, net.config()) == std::vector<std::int32_t>{2, 0});
  auto c = net.config();
  c.eos = 7;  // an EOS that is neither marker comes first
  CHECK(train::chat_stop_ids(tok, c) == std::vector<std::int32_t>{7, 2, 0});
  c.eos = 0;  // <|endoftext|> as EOS: listed once
  CHECK(train::chat_stop_ids(tok, c) == std::vector<std::int32_t>{0, 2});
  c.eos = -1;  // no EOS in the config: the tokenizer's (<|im_end|>)
  CHECK(train::chat_stop_ids(tok, c) == std::vector<std::int32_t>{2, 0});
}

TEST_CASE("chat_stop_ids on the real SmolLM2-135M-Instruct") {
  auto const p = test::real_model_path();
  if (!p) return;
  auto const f = io::GgufFile::open(*p);
  auto const c = model::config_from_gguf(f);
  auto const tok = text::tokenizer_from_gguf(f);
  // SmolLM2's vocabulary starts <|endoftext|> (0), <|im_start|> (1), <|im_end|> (2); its EOS is 2.
  CHECK(tok.token_to_id("<|endoftext|>") == 0);
  CHECK(tok.token_to_id("<|im_end|>") == 2);
  CHECK(train::chat_stop_ids(tok, c) == std::vector<std::int32_t>{2, 0});
}

TEST_CASE("prompt_format_for: the tokenizer's ChatML template, else SmolLM2's") {
  auto tok = text::load_tokenizer(tiny_path());
  // The fixture's chat_template.jinja is SmolLM2's.
  CHECK(train::prompt_format_for(tok).chat.default_system() == "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  CHECK(train::prompt_format_for(tok).instruction == data::kDefaultInstruction);
  tok.set_chat_template("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                        "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
                        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}");
  CHECK(train::prompt_format_for(tok).chat.default_system() == "You are a helpful assistant.");
  tok.set_chat_template("");
  CHECK(train::prompt_format_for(tok).chat.default_system() == "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
}

TEST_CASE("evaluate: completions equal a hand-rolled greedy loop over full-sequence logits") {
  auto const tok = text::load_tokenizer(tiny_path());
  auto const net = Model::load(tiny_path());
  auto const qa = arith_questions(4);
  Index const max_new = 12;
  train::EvalOptions o;
  o.batch_size = 4;
  o.max_new_tokens = max_new;
  o.keep_completions = true;
  auto const r = evaluate(net, tok, qa, o);
  REQUIRE(r.n == 4);
  REQUIRE(r.examples.size() == 4);
  auto const stops = train::chat_stop_ids(tok, net.config());
  double total = 0;
  for (std::size_t i = 0; i < qa.size(); ++i) {
    CAPTURE(i);
    Greedy const want = greedy_reference(net, tok, qa[i].question, max_new, stops);
    MESSAGE("example " << i << ": '" << r.examples[i].completion << "' (min top-2 margin " << want.min_margin << ")");
    // A near-tie could flip between the cached and the full path; the fixture has none.
    REQUIRE(want.min_margin > 1e-4f);
    CHECK(r.examples[i].tokens == want.tokens);
    CHECK(r.examples[i].stopped == want.stopped);
    CHECK(r.examples[i].n_tokens == static_cast<Index>(want.tokens.size()));
    CHECK(r.examples[i].completion == completion_text(tok, want));
    CHECK(r.examples[i].reference == data::gsm8k_reference_answer(qa[i].answer));
    total += static_cast<double>(want.tokens.size());
  }
  CHECK(r.mean_tokens == doctest::Approx(total / 4.0));
}

TEST_CASE("evaluate: a stop id ends the completion (the stop token counted, not written)") {
  auto const tok = text::load_tokenizer(tiny_path());
  auto const net = Model::load(tiny_path());
  auto const qa = arith_questions(1);
  Greedy const free_run = greedy_reference(net, tok, qa[0].question, 12, {});
  // The first token from step 2 on that has not appeared before becomes the stop id.
  std::size_t k = 2;
  while (k < free_run.tokens.size() &&
         std::find(free_run.tokens.begin(), free_run.tokens.begin() + static_cast<std::ptrdiff_t>(k), free_run.tokens[k]) !=
             free_run.tokens.begin() + static_cast<std::ptrdiff_t>(k))
    ++k;
  REQUIRE(k < free_run.tokens.size());
  std::int32_t const stop = free_run.tokens[k];
  train::EvalOptions o;
  o.max_new_tokens = 12;
  o.keep_completions = true;
  o.stop_ids = std::vector<std::int32_t>{stop};
  auto const r = evaluate(net, tok, qa, o);
  auto const& e = r.examples.at(0);
  std::vector<std::int32_t> const want(free_run.tokens.begin(), free_run.tokens.begin() + static_cast<std::ptrdiff_t>(k + 1));
  CHECK(e.tokens == want);
  CHECK(e.stopped);
  CHECK(e.n_tokens == static_cast<Index>(k + 1));
  CHECK(e.completion == tok.decode(std::vector<std::int32_t>(want.begin(), want.end() - 1), true));
  // With no stop hit, the completion runs to max_new_tokens.
  o.stop_ids = std::vector<std::int32_t>{};
  auto const full = evaluate(net, tok, qa, o);
  CHECK_FALSE(full.examples.at(0).stopped);
  CHECK(full.examples.at(0).tokens == free_run.tokens);
}

TEST_CASE("evaluate: batch size 1 and 3 give identical results") {
  auto const tok = text::load_tokenizer(tiny_path());
  auto const net = Model::load(tiny_path());
  auto const qa = arith_questions(5);  // 3 + 2: a partial last batch
  train::EvalOptions o;
  o.max_new_tokens = 10;
  o.keep_completions = true;
  o.rule = data::ExtractRule::LastNumber;
  o.batch_size = 1;
  auto const one = evaluate(net, tok, qa, o);
  o.batch_size = 3;
  auto const three = evaluate(net, tok, qa, o);
  REQUIRE(one.examples.size() == 5);
  REQUIRE(three.examples.size() == 5);
  for (std::size_t i = 0; i < 5; ++i) {
    CAPTURE(i);
    CHECK(one.examples[i].tokens == three.examples[i].tokens);
    CHECK(one.examples[i].completion == three.examples[i].completion);
    CHECK(one.examples[i].predicted == three.examples[i].predicted);
    CHECK(one.examples[i].stopped == three.examples[i].stopped);
  }
  CHECK(one.correct == three.correct);
  CHECK(one.n_correct == three.n_correct);
  CHECK(one.mean_tokens == three.mean_tokens);
  // keep_completions off: the same scores, no per-example records.
  o.keep_completions = false;
  auto const lean = evaluate(net, tok, qa, o);
  CHECK(lean.examples.empty());
  CHECK(lean.correct == one.correct);
  CHECK(lean.mean_tokens == one.mean_tokens);
}

TEST_CASE("evaluate: scoring follows the reference answers (forced match and mismatch)") {
  auto const tok = text::load_tokenizer(tiny_path());
  auto const net = Model::load(tiny_path());
  auto qa = arith_questions(8);
  train::EvalOptions o;
  o.max_new_tokens = 24;
  o.keep_completions = true;
  o.rule = data::ExtractRule::LastNumber;
  auto const first = evaluate(net, tok, qa, o);
  // Rewrite each answer from what the model wrote: even examples get "#### <its number>" (must
  // score), odd ones "#### <its number>7" (a different number: must not). No number: never correct.
  std::vector<std::uint8_t> want(qa.size(), 0);
  Index with_number = 0;
  for (std::size_t i = 0; i < qa.size(); ++i) {
    auto const got = data::extract_answer(first.examples[i].completion, data::ExtractRule::LastNumber);
    MESSAGE("example " << i << ": '" << first.examples[i].completion << "' -> " << got.value_or("(none)"));
    if (!got) {
      qa[i].answer = "reasoning\n####";  // the empty reference "" does not match a missing answer
      continue;
    }
    ++with_number;
    qa[i].answer = "He worked it out.\n#### " + *got + (i % 2 == 0 ? "" : "7");
    want[i] = i % 2 == 0 ? 1 : 0;
  }
  MESSAGE(with_number << " of " << qa.size() << " completions hold a number");
  REQUIRE(with_number >= 2);
  auto const r = evaluate(net, tok, qa, o);
  CHECK(r.correct == want);
  Index const n_want = std::count(want.begin(), want.end(), std::uint8_t{1});
  CHECK(r.n_correct == n_want);
  CHECK(r.accuracy() == doctest::Approx(static_cast<double>(n_want) / 8.0));
  for (std::size_t i = 0; i < qa.size(); ++i) CHECK(r.examples[i].completion == first.examples[i].completion);
  // Under the paper's rule the same completions (no "####" in them) score nothing.
  o.rule = data::ExtractRule::PaperFork;
  auto const fork = evaluate(net, tok, qa, o);
  CHECK(fork.n_correct == 0);
  for (auto const& e : fork.examples) CHECK(e.predicted.empty());
}

TEST_CASE("score_completion: hand-written completions under each rule") {
  data::QaExample const ex{"q", "Step one.\nStep two.\n#### 1,200"};
  auto a = train::score_completion("So the total is 1200.\n#### 1200", ex, data::ExtractRule::PaperFork);
  CHECK(a.predicted == "1200");
  CHECK(a.reference == "1,200");
  CHECK(a.correct);
  auto b = train::score_completion("#### 1200.00", ex, data::ExtractRule::PaperFork);
  CHECK(b.correct);  // exact numeric match, not string match
  auto c = train::score_completion("The answer is 1200.", ex, data::ExtractRule::PaperFork);
  CHECK(c.predicted.empty());  // no "####": the paper's rule finds nothing
  CHECK_FALSE(c.correct);
  auto d = train::score_completion("The answer is 1200.", ex, data::ExtractRule::LastNumber);
  CHECK(d.predicted == "1200");
  CHECK(d.correct);
  auto e = train::score_completion("#### 1201", ex, data::ExtractRule::Reference);
  CHECK(e.predicted == "1201");
  CHECK_FALSE(e.correct);
  CHECK(e.completion == "#### 1201");
}

TEST_CASE("evaluate: the adapter plugged into the model is used; disabled or theta = 0 is the base") {
  auto const tok = text::load_tokenizer(tiny_path());
  auto net = Model::load(tiny_path());
  auto const qa = arith_questions(3);
  train::EvalOptions o;
  o.max_new_tokens = 8;
  o.keep_completions = true;
  auto const tokens_of = [](train::EvalResult const& r) {
    std::vector<std::vector<std::int32_t>> out;
    for (auto const& e : r.examples) out.push_back(e.tokens);
    return out;
  };
  auto const base = tokens_of(evaluate(net, tok, qa, o));
  using Kind = adapters::TinyLora<adapters::Reference>;
  auto spec = model::AdapterSpec::of_budget(2);
  spec.options.seed = 1;
  model::AdaptedModel<Recipe<Kind, tying::Tiling, precision::Fp32, optim::AdamW, backend::Cpu>> adapted(net, spec);
  REQUIRE(adapted.count() == 2);
  adapted.set_theta(std::vector<float>{0.0f, 0.0f});
  CHECK(tokens_of(evaluate(net, tok, qa, o)) == base);
  std::vector<float> const theta{3.0f, -3.0f};
  adapted.set_theta(theta);
  adapted.set_enabled(false);
  CHECK(tokens_of(evaluate(net, tok, qa, o)) == base);
  adapted.set_enabled(true);
  auto const trained = evaluate(net, tok, qa, o);
  CHECK(tokens_of(trained) != base);
  // The adapted completions are the greedy loop over the adapted model's full-sequence logits.
  auto const stops = train::chat_stop_ids(tok, net.config());
  for (std::size_t i = 0; i < qa.size(); ++i) {
    Greedy const want = greedy_reference(net, tok, qa[i].question, 8, stops);
    REQUIRE(want.min_margin > 1e-4f);
    CHECK(trained.examples[i].tokens == want.tokens);
  }
}

TEST_CASE("write_eval: attributes and datasets read back") {
  train::EvalResult r;
  r.n = 3;
  r.n_correct = 2;
  r.mean_tokens = 17.5;
  r.seconds = 0.25;
  r.correct = {1, 0, 1};
  r.examples = {{"#### 4", "4", "4", true, 3, true, {1, 2, 3}},
                {"no idea", "", "5", false, 40, false, {}},
                {"ünïcode #### 6", "6", "6", true, 9, true, {}}};
  auto const path = test::scratch_dir("evaluate") / "eval.h5";
  {
    auto f = io::ResultFile::create(path);
    train::write_eval(f, "baseline", r);
    r.examples.clear();
    train::write_eval(f, "runs/lean", r);
    f.finalize();
  }
  auto const f = io::ResultFile::open(path, io::ResultFile::Mode::ReadOnly);
  CHECK(f.get_attr<std::int64_t>("baseline", "n") == 3);
  CHECK(f.get_attr<std::int64_t>("baseline", "n_correct") == 2);
  CHECK(f.get_attr<double>("baseline", "accuracy") == doctest::Approx(2.0 / 3.0));
  CHECK(f.get_attr<double>("baseline", "mean_tokens") == 17.5);
  CHECK(f.read_vector<std::uint8_t>("baseline/correct") == std::vector<std::uint8_t>{1, 0, 1});
  CHECK(f.read_strings("baseline/completions") == std::vector<std::string>{"#### 4", "no idea", "ünïcode #### 6"});
  CHECK(f.read_strings("baseline/predicted") == std::vector<std::string>{"4", "", "6"});
  CHECK(f.read_strings("baseline/reference") == std::vector<std::string>{"4", "5", "6"});
  CHECK(f.read_vector<std::int64_t>("baseline/n_tokens") == std::vector<std::int64_t>{3, 40, 9});
  CHECK(f.read_vector<std::uint8_t>("baseline/stopped") == std::vector<std::uint8_t>{1, 0, 1});
  CHECK(f.has("runs/lean/correct"));
  CHECK_FALSE(f.has("runs/lean/completions"));
  CHECK(f.get_attr<double>("runs/lean", "accuracy") == doctest::Approx(2.0 / 3.0));
}

TEST_CASE("evaluate and write_eval reject bad inputs with a hint") {
  auto const tok = text::load_tokenizer(tiny_path());
  auto const net = Model::load(tiny_path());
  auto const qa = arith_questions(1);
  train::EvalOptions o;
  o.batch_size = 0;
  CHECK_THROWS_WITH_AS(evaluate(net, tok, qa, o), doctest::Contains("batch_size must be >= 1 (got 0)"), Error);
  o.batch_size = 1;
  o.max_new_tokens = 0;
  CHECK_THROWS_WITH_AS(evaluate(net, tok, qa, o), doctest::Contains("max_new_tokens must be >= 1"), Error);
  train::EvalResult bad;
  bad.n = 2;
  bad.correct = {1};
  auto f = io::ResultFile::create(test::scratch_dir("evaluate_bad") / "bad.h5");
  CHECK_THROWS_WITH_AS(train::write_eval(f, "g", bad), doctest::Contains("1 correctness flags for n = 2"), Error);
  // An empty dataset is a valid (empty) evaluation.
  auto const none = evaluate(net, tok, {}, train::EvalOptions{});
  CHECK(none.n == 0);
  CHECK(none.accuracy() == 0.0);
}

TEST_CASE("pass@k from G samples: Chen et al.'s unbiased estimator, hand-computed") {
  train::EvalResult r;
  r.samples = 4;
  r.correct_samples = {0, 1, 2, 4};
  CHECK(r.pass_at(1) == doctest::Approx((0.0 + 0.25 + 0.5 + 1.0) / 4));
  // pass@2 = 1 - C(4 - c, 2) / C(4, 2): 0, 1 - 3/6, 1 - 1/6, 1.
  CHECK(r.pass_at(2) == doctest::Approx((0.0 + 0.5 + 5.0 / 6.0 + 1.0) / 4));
  CHECK(r.pass_at(4) == doctest::Approx(0.75));  // any of the four right
  CHECK_THROWS_WITH_AS(r.pass_at(5), doctest::Contains("needs 1 <= k <= G = 4"), Error);
  CHECK_THROWS_WITH_AS(train::EvalResult{}.pass_at(1), doctest::Contains("needs 1 <= k <= G = 0"), Error);
}

TEST_CASE("evaluate with samples: draws keyed by (seed, example, sample), so batching changes nothing; counts follow the references") {
  auto const seed = test::seed(61);
  auto const tok = text::load_tokenizer(tiny_path());
  auto const net = Model::load(tiny_path());
  auto qa = arith_questions(5);
  train::EvalOptions o;
  o.max_new_tokens = 12;
  o.keep_completions = true;
  o.rule = data::ExtractRule::LastNumber;
  o.samples = 3;
  o.temperature = 1.0f;
  o.seed = seed;
  o.batch_size = 1;
  auto const one = evaluate(net, tok, qa, o);
  o.batch_size = 3;
  auto const three = evaluate(net, tok, qa, o);
  REQUIRE(one.sample_completions.size() == 15);
  CHECK(one.sample_completions == three.sample_completions);
  CHECK(one.correct_samples == three.correct_samples);
  CHECK(one.sample_mean_tokens == three.sample_mean_tokens);
  // Sampling is not greedy: some sample differs from its example's greedy completion.
  bool differs = false;
  for (std::size_t i = 0; i < 15; ++i) differs = differs || one.sample_completions[i] != one.examples[i / 3].completion;
  CHECK(differs);
  // References set from sample 0's last number: that sample (and any other with the same number)
  // now counts; the count equals a recount of the kept samples.
  Index forced = 0;
  for (std::size_t i = 0; i < qa.size(); ++i)
    if (auto const got = data::extract_answer(one.sample_completions[3 * i], data::ExtractRule::LastNumber)) {
      qa[i].answer = "#### " + *got;
      ++forced;
    } else {
      qa[i].answer = "reasoning\n####";
    }
  o.seed = seed + 1;  // another seed: other draws
  auto const other = evaluate(net, tok, qa, o);
  CHECK(other.sample_completions != one.sample_completions);
  o.seed = seed;
  auto const scored = evaluate(net, tok, qa, o);
  MESSAGE(forced << " of 5 first samples hold a number; correct samples per example: " << scored.correct_samples[0] << " "
                 << scored.correct_samples[1] << " " << scored.correct_samples[2] << " " << scored.correct_samples[3] << " "
                 << scored.correct_samples[4]);
  for (std::size_t i = 0; i < qa.size(); ++i) {
    std::int32_t recount = 0;
    for (std::size_t g = 0; g < 3; ++g) recount += train::score_completion(scored.sample_completions[3 * i + g], qa[i], o.rule).correct ? 1 : 0;
    CHECK(scored.correct_samples[i] == recount);
  }
  REQUIRE(forced >= 1);
  CHECK(scored.pass_at(3) >= static_cast<double>(forced) / 5.0);
  // The record: counts, the estimates and the kept samples.
  auto const path = test::scratch_dir("evaluate") / "sampled.h5";
  {
    auto f = io::ResultFile::create(path);
    train::write_eval(f, "baseline", scored);
    f.finalize();
  }
  auto const f = io::ResultFile::open(path, io::ResultFile::Mode::ReadOnly);
  CHECK(f.read_vector<std::int32_t>("baseline/correct_samples") == scored.correct_samples);
  CHECK(f.get_attr<std::int64_t>("baseline", "samples") == 3);
  CHECK(f.get_attr<double>("baseline", "pass_at_3") == doctest::Approx(scored.pass_at(3)));
  CHECK(f.get_attr<double>("baseline", "pass_at_1") == doctest::Approx(scored.pass_at(1)));
  CHECK(f.read_strings("baseline/sample_completions") == scored.sample_completions);
}
