// Rewards as weighted terms (train/reward.hpp): the format rule and DAPO's overlong penalty on
// hand-made completions, the spec parser and its errors, and the weighted sum of the components.
#include <doctest/doctest.h>

#include "tinylora/train/reward.hpp"

using namespace tinylora;
using train::AnswerFormat;
using train::ends_with_formatted_answer;

TEST_CASE("format reward: the completion must end with its answer as '#### n' or '\\boxed{n}'") {
  struct Case {
    char const* text;
    bool hash, boxed;
  };
  Case const cases[] = {
      {"7 + 5 = 12\n#### 12", true, false},
      {"The answer is #### 12.", true, false},
      {"#### -3\n\n", true, false},
      {"#### 1,000", true, false},
      {"#### $5", true, false},
      {"first #### 4 then #### 9", true, false},           // the last "####" counts
      {"#### 12 apples", false, false},                    // words after the number
      {"#### 12\nLet me check: 7 + 5 = 12", false, false}, // not at the end
      {"####", false, false},
      {"#### twelve", false, false},
      {"So the answer is 12.", false, false},              // right, but not formatted
      {"so the answer is \\boxed{12}.", false, true},
      {"$\\boxed{12}$", false, true},
      {"\\[\\boxed{ 0.5 }\\]", false, true},
      {"\\boxed{\\frac{1}{2}}", false, true},              // a fraction is one number
      {"\\boxed{12} and then more", false, false},
      {"\\boxed{x + 1}", false, false},
      {"\\boxed{12", false, false},                        // unclosed
      {"#### 3\n\\boxed{3}", false, true},                 // ends with the boxed one
  };
  for (auto const& c : cases) {
    INFO("completion: '" << c.text << "'");
    CHECK(ends_with_formatted_answer(c.text, AnswerFormat::Hash) == c.hash);
    CHECK(ends_with_formatted_answer(c.text, AnswerFormat::Boxed) == c.boxed);
    CHECK(ends_with_formatted_answer(c.text, AnswerFormat::Either) == (c.hash || c.boxed));
  }
}

TEST_CASE("DAPO's soft overlong penalty, hand-computed: 0, then linear to -1 over the last C tokens; -1 when cut") {
  // L_max = 100, C = 20: free up to 80 tokens.
  CHECK(train::overlong_penalty(10, true, 100, 20) == 0.0);
  CHECK(train::overlong_penalty(80, true, 100, 20) == 0.0);
  CHECK(train::overlong_penalty(90, true, 100, 20) == doctest::Approx(-0.5));
  CHECK(train::overlong_penalty(95, true, 100, 20) == doctest::Approx(-0.75));
  CHECK(train::overlong_penalty(100, true, 100, 20) == doctest::Approx(-1.0));  // stopped on its last allowed token
  CHECK(train::overlong_penalty(100, false, 100, 20) == -1.0);                  // cut at L_max
  CHECK(train::overlong_penalty(100, false, 100, 1) == -1.0);
  CHECK(train::overlong_penalty(99, true, 100, 1) == 0.0);
}

TEST_CASE("Reward::parse: terms, arguments and weights; describe() reads back; the weighted sum") {
  auto const r = train::Reward::parse("correct:last-number=1, format:hash=0.5,length:16=0.25", data::ExtractRule::PaperFork);
  REQUIRE(r.terms.size() == 3);
  CHECK(r.terms[0].name() == "correct_last-number");
  CHECK(r.terms[1].name() == "format_hash");
  CHECK(r.terms[2].name() == "length");
  CHECK(r.terms[2].cache == 16);
  CHECK(r.describe() == "correct:last-number=1,format:hash=0.5,length:16=0.25");
  CHECK(train::Reward::parse(r.describe(), data::ExtractRule::Boxed).describe() == r.describe());
  // "correct" alone takes the default rule; "format" alone means either form.
  auto const d = train::Reward::parse("correct,format", data::ExtractRule::Reference);
  CHECK(d.describe() == "correct:reference=1,format:either=1");
  CHECK(train::Reward::exact_match(data::ExtractRule::PaperFork).describe() == "correct:paper-fork=1");

  // Right but unformatted, 70 of 64 + 16 = 80 tokens: 1 + 0.5 * 0 + 0.25 * (64 - 70) / 16.
  auto const s = r.score({"7 + 5 = 12. The answer is 12", "12", 70, true, 80});
  REQUIRE(s.components.size() == 3);
  CHECK(s.components[0] == 1.0);
  CHECK(s.components[1] == 0.0);
  CHECK(s.components[2] == doctest::Approx(-6.0 / 16.0));
  CHECK(s.total == doctest::Approx(1.0 - 0.25 * 6.0 / 16.0));
  // Formatted and wrong, cut at the limit.
  auto const t = r.score({"#### 13", "12", 80, false, 80});
  CHECK(t.components == std::vector<double>{0.0, 1.0, -1.0});
  CHECK(t.total == doctest::Approx(0.5 - 0.25));
  // Under paper-fork, correctness needs the format too.
  auto const p = train::Reward::parse("correct", data::ExtractRule::PaperFork);
  CHECK(p.score({"The answer is 12", "12", 5, true, 80}).total == 0.0);
  CHECK(p.score({"#### 12", "12", 5, true, 80}).total == 1.0);
}

TEST_CASE("Reward::parse and validate: every malformed spec is refused with a message naming it") {
  auto const refused = [](char const* spec, char const* says) {
    INFO("spec '" << spec << "'");
    CHECK_THROWS_WITH_AS(train::Reward::parse(spec, data::ExtractRule::PaperFork), doctest::Contains(says), Error);
  };
  refused("", "empty term");
  refused("correct,,format", "empty term");
  refused("accuracy", "unknown reward term 'accuracy'");
  refused("correct:exact", "unknown rule 'exact'");
  refused("format:bold", "unknown answer format 'bold'");
  refused("length", "needs its soft window");
  refused("length:0", "needs its soft window");
  refused("length:8x", "needs its soft window");
  refused("correct=high", "is not a finite number");
  refused("correct=nan", "is not a finite number");
  refused("correct=1,correct:paper-fork=2", "appears twice");
  auto const r = train::Reward::parse("correct,length:64", data::ExtractRule::PaperFork);
  CHECK_NOTHROW(r.validate(64));
  CHECK_THROWS_WITH_AS(r.validate(32), doctest::Contains("longer than the generation limit 32"), Error);
  CHECK_THROWS_WITH_AS(train::Reward{}.validate(32), doctest::Contains("no terms"), Error);
}
