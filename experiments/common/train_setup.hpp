// experiments/common/train_setup.hpp: what the training experiments (02 sweep, 03 GRPO, 04 SFT)
// share: the options of the model, data, adapter budget, evaluation and checkpoints; the identity
// of a run (so a result file or checkpoint folder is never mixed with another run's); the baseline
// and trained evaluations, each done once and kept in the result file.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "common/cli.hpp"
#include "common/model_path.hpp"
#include "tinylora/core/sha256.hpp"
#include "tinylora/data/qa.hpp"
#include "tinylora/io/hdf5.hpp"
#include "tinylora/model/adapter_record.hpp"
#include "tinylora/train/evaluate.hpp"
#include "tinylora/train/loop.hpp"

namespace tinylora::cli {

struct TrainRunOptions {
  std::string model = default_model_path();
  // Defaults: the task ladder's calibrated level, L1 (data/ladder/README.md: the base model's greedy
  // pass@1 there is 36 %, inside the 15-60 % band where a tiny update can show), scored on the last
  // number; the paper's GSM8K run: --data/--eval-data GSM8K's files and --rule paper-fork.
  std::string data = "data/ladder/L1_train.jsonl", eval_data = "data/ladder/L1_test.jsonl";
  std::string question_field = "question", answer_field = "answer";
  std::size_t limit = 0, offset = 0;            // training examples
  std::size_t eval_limit = 64, eval_offset = 0; // held-out examples (0: all)
  Index budget = 13;
  Index rank = 0;                               // adapter rank (0: the kind's default)
  std::string alpha = "default", u_choices = "1", svd = "automatic";
  std::string targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
  std::uint64_t seed = 0;
  std::string rule = "last-number";
  std::string instruction = data::kDefaultInstruction;  // appended to every question ("": none)
  Index eval_batch = 16, eval_max_new_tokens = 256;
  std::string out, checkpoints;                 // checkpoints default: <out>.ckpt
  Index checkpoint_every = 1, keep_last = 3, die_at_step = -1;
  bool keep_completions = false;
  Index val_every = 0;            // greedy pass@1 on the validation slice every this many training steps (0: never)
  std::size_t val_limit = 64;     // validation examples: --data's, right after the training examples
  std::string baseline_from;      // another run's result file whose untrained baseline this run reuses (checked)

  static TrainRunOptions with_out(std::string path) {
    TrainRunOptions o;
    o.out = std::move(path);
    return o;
  }
};

inline void add_train_run_options(po::options_description& desc, TrainRunOptions& o) {
  desc.add_options()("model", po::value(&o.model)->default_value(o.model), "GGUF model file or Hugging Face folder")(
      "data", po::value(&o.data)->default_value(o.data), "training JSONL (question/answer)")(
      "eval-data", po::value(&o.eval_data)->default_value(o.eval_data), "held-out JSONL for the baseline and trained accuracy")(
      "question-field", po::value(&o.question_field)->default_value(o.question_field), "JSON field of the question")(
      "answer-field", po::value(&o.answer_field)->default_value(o.answer_field), "JSON field of the answer")(
      "limit", po::value(&o.limit)->default_value(o.limit), "training examples used (0: all)")(
      "offset", po::value(&o.offset)->default_value(o.offset), "training examples skipped first")(
      "eval-limit", po::value(&o.eval_limit)->default_value(o.eval_limit), "held-out examples evaluated (0: all)")(
      "eval-offset", po::value(&o.eval_offset)->default_value(o.eval_offset), "held-out examples skipped first")(
      "eval-batch", po::value(&o.eval_batch)->default_value(o.eval_batch), "prompts generated together when evaluating")(
      "eval-max-new-tokens", po::value(&o.eval_max_new_tokens)->default_value(o.eval_max_new_tokens), "generation limit when evaluating")(
      "budget", po::value(&o.budget)->default_value(o.budget), "trainable scalars b: the planner picks the tie setting (and u) closest to it")(
      "rank", po::value(&o.rank)->default_value(o.rank), "adapter rank r: frozen SVD rank (TinyLoRA, LoRA-XS) or LoRA's rank (0: the kind's default)")(
      "alpha", po::value(&o.alpha)->default_value(o.alpha), "scale numerator alpha of the kinds that have one ('default': the kind's or convention's)")(
      "u", po::value(&o.u_choices)->default_value(o.u_choices), "TinyLoRA: the u the budget planner may choose, comma-separated")(
      "svd", po::value(&o.svd)->default_value(o.svd), "SVD of the frozen weights: automatic | exact | krylov | randomized")(
      "targets", po::value(&o.targets)->default_value(o.targets), "adapted module types, comma-separated, or all-linear")(
      "seed", po::value(&o.seed)->default_value(o.seed), "seed of the projections, data order and sampling")(
      "rule", po::value(&o.rule)->default_value(o.rule), "answer extraction: paper-fork | reference | boxed | last-number")(
      "instruction", po::value(&o.instruction)->default_value(o.instruction), "appended to every question after a blank line (\"\": none)")(
      "checkpoints", po::value(&o.checkpoints), "checkpoint folder (default: <out>.ckpt)")(
      "checkpoint-every", po::value(&o.checkpoint_every)->default_value(o.checkpoint_every), "steps between checkpoints")(
      "keep-last", po::value(&o.keep_last)->default_value(o.keep_last), "checkpoints kept")(
      "keep-completions", po::bool_switch(&o.keep_completions), "store every evaluation completion in the result file")(
      "val-every", po::value(&o.val_every)->default_value(o.val_every)->value_name("K"),
      "training: greedy pass@1 on the validation slice after every K steps, logged under validation/ (0: never)")(
      "val-limit", po::value(&o.val_limit)->default_value(o.val_limit),
      "validation examples, taken from --data right after the --offset + --limit training examples")(
      "baseline-from", po::value(&o.baseline_from)->value_name("FILE"),
      "take the untrained baseline from another run's result file instead of evaluating it again (its model, held-out "
      "examples and evaluation options must be this run's: checked)")(
      "die-at-step", po::value(&o.die_at_step)->default_value(o.die_at_step)->value_name("S"),
      "testing: kill this process with SIGKILL after step S is logged, before its checkpoint");
}

/// The run-time half of the recipe (the adapter's options, budget and targets) from the options.
inline model::AdapterSpec adapter_spec(TrainRunOptions const& o) {
  model::AdapterSpec spec;
  spec.budget = o.budget;
  spec.options.r = o.rank;
  if (o.alpha != "default") spec.options.alpha = parse_floats(o.alpha, "alpha").at(0);
  spec.options.u_choices = parse_counts(o.u_choices, "u");
  spec.options.svd = adapters::svd_method_from_name(o.svd);
  spec.options.seed = o.seed;
  spec.targets.types = model::detail::split_commas(o.targets);
  TINYLORA_CHECK(o.budget >= 1, "--budget must be >= 1 (got ", o.budget, ")");
  spec.options.validate();
  return spec;
}

/// The part of a run's identity that the shared options determine (file hashes included).
inline std::string train_run_identity(TrainRunOptions const& o) {
  return "model=" + model_fingerprint(o.model) + " data=" + sha256_file(o.data) + " eval_data=" + sha256_file(o.eval_data) + " q=" + o.question_field +
         " a=" + o.answer_field + " limit=" + std::to_string(o.limit) + " offset=" + std::to_string(o.offset) +
         " eval_limit=" + std::to_string(o.eval_limit) + " eval_offset=" + std::to_string(o.eval_offset) +
         " eval_max_new_tokens=" + std::to_string(o.eval_max_new_tokens) + " budget=" + std::to_string(o.budget) + " rank=" + std::to_string(o.rank) + " alpha=" + o.alpha + " u=" + o.u_choices +
         " svd=" + o.svd + " targets=" + o.targets +
         " seed=" + std::to_string(o.seed) + " rule=" + o.rule + " instruction=" + o.instruction +
         (o.val_every > 0 ? " val_every=" + std::to_string(o.val_every) + " val_limit=" + std::to_string(o.val_limit) : std::string());
}

inline std::filesystem::path checkpoint_dir(TrainRunOptions const& o) {
  return o.checkpoints.empty() ? std::filesystem::path(o.out + ".ckpt") : std::filesystem::path(o.checkpoints);
}

inline std::vector<data::QaExample> load_train(TrainRunOptions const& o) {
  return data::load_qa_jsonl(o.data, {o.question_field, o.answer_field, o.offset, o.limit, false, o.seed});
}
inline std::vector<data::QaExample> load_eval(TrainRunOptions const& o) {
  return data::load_qa_jsonl(o.eval_data, {o.question_field, o.answer_field, o.eval_offset, o.eval_limit, false, o.seed});
}
/// The validation slice: --val-limit examples of --data right after the training ones (never the
/// held-out file, which chooses nothing).
inline std::vector<data::QaExample> load_validation(TrainRunOptions const& o) {
  TINYLORA_CHECK(o.limit > 0 && o.val_limit > 0, "validation needs --limit > 0 (the examples after the training ones validate) and --val-limit > 0");
  auto val = data::load_qa_jsonl(o.data, {o.question_field, o.answer_field, o.offset + o.limit, o.val_limit, false, o.seed});
  TINYLORA_CHECK(val.size() == o.val_limit, "'", o.data, "' has only ", val.size(), " examples after the ", o.offset + o.limit,
                 " training ones (wanted --val-limit ", o.val_limit, "). Hint: lower --limit or --val-limit.");
  return val;
}

/// The run's result file, opened for resuming (created if missing): a file made with another identity
/// is refused; the root attributes say which experiment, recipe, budget and tie plan wrote it, and
/// group /adapter records the adapter exactly (model/adapter_record.hpp: 05_evaluate --run rebuilds it).
template <class R>
io::ResultFile open_run_file(TrainRunOptions const& o, std::string const& program, std::string const& identity,
                             model::AdaptedModel<R> const& policy) {
  std::filesystem::create_directories(std::filesystem::absolute(o.out).parent_path());
  auto file = io::ResultFile::open_or_create_resumable(o.out);
  train::check_run_identity(file, identity, program, o.out);
  file.set_attr("/", "experiment", program);
  file.set_attr("/", "recipe", R::describe());
  file.set_attr("/", "budget", static_cast<std::int64_t>(o.budget));
  file.set_attr("/", "tie", policy.plan().tie.describe());
  file.set_attr("/", "model_sha256", model_fingerprint(o.model));
  record_platform(file);
  model::record_or_check_adapter(file, policy, model_fingerprint(o.model));
  return file;
}

/// How the experiments evaluate: greedy, the run's rule, instruction and limits.
inline train::EvalOptions eval_options(text::Tokenizer const& tok, TrainRunOptions const& o) {
  train::EvalOptions e;
  e.batch_size = o.eval_batch;
  e.max_new_tokens = o.eval_max_new_tokens;
  e.rule = data::extract_rule_from_string(o.rule);
  e.format = train::prompt_format_for(tok, o.instruction);
  e.keep_completions = o.keep_completions;
  return e;
}

/// Greedy pass@1 on the held-out examples, stored under `group`; done once: a resumed run reads it back.
template <class Model>
double evaluate_once(io::ResultFile& file, std::string const& group, Model const& m, text::Tokenizer const& tok,
                     std::vector<data::QaExample> const& examples, TrainRunOptions const& o) {
  if (file.has_attr(group, "accuracy")) {
    double const acc = file.get_attr<double>(group, "accuracy");
    std::printf("%s accuracy (from the result file): %.4f\n", group.c_str(), acc);
    return acc;
  }
  auto const r = train::evaluate(m, tok, examples, eval_options(tok, o));
  train::write_eval(file, group, r);
  file.flush();
  std::printf("%s accuracy: %td / %td = %.4f (mean %.1f tokens, %.1f s)\n", group.c_str(), r.n_correct, r.n, r.accuracy(), r.mean_tokens,
              r.seconds);
  std::fflush(stdout);
  return r.accuracy();
}

/// The loop's probe for --val-every: greedy pass@1 (and mean length) of `m` as it stands on `val`.
/// After the last of `total` steps it evaluates through evaluate_once into `final_group`, so the
/// run's final validation (which a sweep selects on) is measured once and kept example by example.
template <class Model>
train::LoopOptions with_validation(train::LoopOptions loop, io::ResultFile& file, std::string final_group, Index total, Model const& m,
                                   text::Tokenizer const& tok, std::vector<data::QaExample> const& val, TrainRunOptions const& o) {
  if (o.val_every <= 0) return loop;
  loop.probe_every = o.val_every;
  loop.probe = [&file, group = std::move(final_group), total, &m, &tok, &val, &o](Index s) {
    if (s + 1 == total) {
      double const acc = evaluate_once(file, group, m, tok, val, o);
      return train::Metrics{{"pass_at_1", acc}, {"mean_tokens", file.get_attr<double>(group, "mean_tokens")}};
    }
    auto const r = train::evaluate(m, tok, val, eval_options(tok, o));
    return train::Metrics{{"pass_at_1", r.accuracy()}, {"mean_tokens", r.mean_tokens}};
  };
  return loop;
}

/// What makes two held-out evaluations of the untrained model the same one: model, examples, options.
inline std::string held_out_identity(TrainRunOptions const& o) {
  return "model=" + model_fingerprint(o.model) + " eval_data=" + sha256_file(o.eval_data) + " q=" + o.question_field + " a=" + o.answer_field +
         " eval_offset=" + std::to_string(o.eval_offset) + " eval_limit=" + std::to_string(o.eval_limit) +
         " eval_batch=" + std::to_string(o.eval_batch) + " eval_max_new_tokens=" + std::to_string(o.eval_max_new_tokens) + " rule=" + o.rule +
         " instruction=" + o.instruction + " keep_completions=" + std::to_string(o.keep_completions);
}

/// The untrained model on the held-out examples (group eval/baseline), evaluated once; with
/// --baseline-from, copied from another run's file after checking that it was evaluated the same way.
template <class Model>
double baseline_once(io::ResultFile& file, Model const& m, text::Tokenizer const& tok, std::vector<data::QaExample> const& examples,
                     TrainRunOptions const& o) {
  std::string const group = "eval/baseline", identity = held_out_identity(o);
  if (!file.has_attr(group, "accuracy") && !o.baseline_from.empty()) {
    auto const from = io::ResultFile::open(o.baseline_from, io::ResultFile::Mode::ReadOnly);
    TINYLORA_CHECK(from.has_attr(group, "eval_identity"), "--baseline-from '", o.baseline_from, "' holds no ", group,
                   " with an evaluation identity. Hint: name the result file of an earlier 02, 03 or 04 run (this version or later).");
    std::string const theirs = from.get_attr<std::string>(group, "eval_identity");
    TINYLORA_CHECK(theirs == identity, "--baseline-from '", o.baseline_from, "': its baseline was evaluated another way.\n  theirs: ", theirs,
                   "\n  this run: ", identity, "\nHint: give the same --model, --eval-data and evaluation options, or drop --baseline-from.");
    TINYLORA_CHECK(!o.keep_completions, "--baseline-from copies the per-example results only; drop --keep-completions or --baseline-from");
    file.create_group(group);
    file.write(group + "/correct", from.template read_vector<std::uint8_t>(group + "/correct"));
    for (char const* key : {"n", "n_correct"}) file.set_attr(group, key, from.get_attr<std::int64_t>(group, key));
    for (char const* key : {"mean_tokens", "seconds", "accuracy"}) file.set_attr(group, key, from.get_attr<double>(group, key));
    file.set_attr(group, "copied_from", o.baseline_from);
    file.set_attr(group, "eval_identity", identity);
    file.flush();
    double const acc = file.get_attr<double>(group, "accuracy");
    std::printf("%s accuracy (copied from %s): %.4f\n", group.c_str(), o.baseline_from.c_str(), acc);
    return acc;
  }
  double const acc = evaluate_once(file, group, m, tok, examples, o);
  if (!file.has_attr(group, "eval_identity")) file.set_attr(group, "eval_identity", identity);
  return acc;
}

/// What a training experiment does once its policy, trainer and result file exist: the baseline
/// (the adapter switched off), the training steps (resumable, checkpointed), theta_final, the trained
/// evaluation, and the one-line summary. Each part done before is read back, not redone.
template <class Net, class Policy, class Trainer>
int baseline_train_evaluate(io::ResultFile& file, Net const& net, Policy& policy, Trainer& trainer, text::Tokenizer const& tok,
                            std::vector<data::QaExample> const& eval_set, TrainRunOptions const& run, std::string const& identity,
                            double lr) {
  policy.set_enabled(false);
  double const baseline = baseline_once(file, net, tok, eval_set, run);
  auto const val_set = run.val_every > 0 ? load_validation(run) : std::vector<data::QaExample>{};
  if (run.val_every > 0) evaluate_once(file, "eval/validation_baseline", net, tok, val_set, run);  // the curve's step 0
  policy.set_enabled(true);
  train::TrainLog log(file, trainer.total_steps(), policy.count());
  train::run_steps(trainer, log,
                   with_validation({.checkpoint_dir = checkpoint_dir(run),
                                    .checkpoint_every = run.checkpoint_every,
                                    .keep_last = static_cast<std::size_t>(run.keep_last),
                                    .run_identity = identity,
                                    .die_at_step = run.die_at_step},
                                   file, "eval/validation", trainer.total_steps(), net, tok, val_set, run));
  if (!file.has("theta_final")) file.write("theta_final", trainer.theta());
  double const trained = evaluate_once(file, "eval/trained", net, tok, eval_set, run);
  std::printf("held-out accuracy: baseline %.4f -> trained %.4f (%+.4f) with b = %td, lr %g\nwrote %s\n", baseline, trained,
              trained - baseline, policy.count(), lr, run.out.c_str());
  return 0;
}

}  // namespace tinylora::cli
