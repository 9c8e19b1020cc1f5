// Tests of io/checkpoint.hpp: bit-exact round trips of every record type, the on-disk format
// against hand-written little-endian bytes and sha256 digests computed by Python's hashlib,
// pruning, re-saving, leftovers of killed saves, every kind of corruption load_latest must skip,
// and a forked writer SIGKILLed mid-save that must never leave a corrupt checkpoint behind.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <iostream>
#include <limits>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "../support.hpp"
#include "tinylora/core/error.hpp"
#include "tinylora/core/rng.hpp"
#include "tinylora/io/checkpoint.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using tinylora::Error;
using tinylora::io::Checkpoint;
using tinylora::io::CheckpointStore;
using tinylora::io::RecordType;

namespace {

std::string slurp(fs::path const& p) {
  std::ifstream in(p, std::ios::binary);
  REQUIRE(in.good());
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void spit(fs::path const& p, std::string const& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  REQUIRE(out.good());
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string hex(std::string const& bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char const c : bytes) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

template <class T>
std::vector<std::uint64_t> bits_of(std::vector<T> const& v) {
  std::vector<std::uint64_t> out;
  for (T const x : v) {
    if constexpr (sizeof(T) == 4)
      out.push_back(std::bit_cast<std::uint32_t>(x));
    else
      out.push_back(std::bit_cast<std::uint64_t>(x));
  }
  return out;
}

/// Runs fn with stderr (fd 2) redirected to a file; returns what was written there.
template <class Fn>
std::string capture_stderr(fs::path const& file, Fn&& fn) {
  std::fflush(stderr);
  std::cerr.flush();
  int const saved = ::dup(2);
  REQUIRE(saved >= 0);
  int const fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  REQUIRE(fd >= 0);
  ::dup2(fd, 2);
  ::close(fd);
  try {
    fn();
  } catch (...) {
    std::cerr.flush();
    ::dup2(saved, 2);
    ::close(saved);
    throw;
  }
  std::cerr.flush();
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  return slurp(file);
}

/// A small checkpoint whose contents depend on step (for telling steps apart).
Checkpoint small_checkpoint(std::int64_t step) {
  Checkpoint c;
  std::vector<float> const theta = {static_cast<float>(step), 0.5f, -1.25f};
  c.put("adapter/theta", theta);
  c.put_i64("step", step);
  c.put_string("note", "step " + std::to_string(step));
  return c;
}

fs::path record_file(CheckpointStore const& store, std::int64_t step, std::string const& name) {
  json const m = json::parse(slurp(store.step_dir(step) / "manifest.json"));
  for (auto const& r : m["records"])
    if (r["name"] == name) return store.step_dir(step) / r["file"].get<std::string>();
  FAIL("no record " << name);
  return {};
}

bool has_tmp_leftovers(fs::path const& dir) {
  for (auto const& e : fs::directory_iterator(dir))
    if (e.path().filename().string().starts_with(".tmp-")) return true;
  return false;
}

}  // namespace

TEST_CASE("Checkpoint round-trips every type bit-exactly, in memory and through the store") {
  float const f_nan_payload = std::bit_cast<float>(std::uint32_t{0x7fa00001});  // signaling NaN, payload 1
  float const f_neg_qnan = std::bit_cast<float>(std::uint32_t{0xffc12345});
  double const d_nan_payload = std::bit_cast<double>(std::uint64_t{0x7ff0000000000abcULL});
  std::vector<float> const floats = {1.0f, -0.0f, std::numeric_limits<float>::infinity(),
                                     -std::numeric_limits<float>::infinity(), f_nan_payload, f_neg_qnan,
                                     std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::max()};
  std::vector<double> const doubles = {0.1, -0.0, std::numeric_limits<double>::infinity(), d_nan_payload,
                                       std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::denorm_min()};
  std::vector<std::int64_t> const ints = {std::numeric_limits<std::int64_t>::min(), -1, 0, 1,
                                          std::numeric_limits<std::int64_t>::max()};
  std::string const text = std::string("héllo\0world\n", 13) + "\xff\xfe";  // values may be any bytes

  Checkpoint c;
  c.put("f", floats);
  c.put("d", doubles);
  c.put("i", ints);
  c.put("f_empty", std::vector<float>{});
  c.put("d_empty", std::vector<double>{});
  c.put("i_empty", std::vector<std::int64_t>{});
  c.put_u64("u_max", std::numeric_limits<std::uint64_t>::max());
  c.put_u64("u_zero", 0);
  c.put_i64("i_min", std::numeric_limits<std::int64_t>::min());
  c.put_string("s", text);
  c.put_string("s_empty", "");

  auto const check = [&](Checkpoint const& got) {
    CHECK(bits_of(got.floats("f")) == bits_of(floats));
    CHECK(bits_of(got.doubles("d")) == bits_of(doubles));
    CHECK(got.int64s("i") == ints);
    CHECK(got.floats("f_empty").empty());
    CHECK(got.doubles("d_empty").empty());
    CHECK(got.int64s("i_empty").empty());
    CHECK(got.u64("u_max") == std::numeric_limits<std::uint64_t>::max());
    CHECK(got.u64("u_zero") == 0);
    CHECK(got.i64("i_min") == std::numeric_limits<std::int64_t>::min());
    CHECK(got.string("s") == text);
    CHECK(got.string("s").size() == 15);
    CHECK(got.string("s_empty").empty());
    CHECK(got.names() == std::vector<std::string>{"d", "d_empty", "f", "f_empty", "i", "i_empty", "i_min", "s",
                                                  "s_empty", "u_max", "u_zero"});
    CHECK(got.type("u_max") == RecordType::kU64Scalar);
    CHECK(got.type("i") == RecordType::kI64Array);
  };
  check(c);

  CheckpointStore store(tinylora::test::scratch_dir("checkpoint_roundtrip"));
  store.save(12, c);
  CHECK(store.steps() == std::vector<std::int64_t>{12});
  CHECK(fs::is_directory(store.dir() / "step-000000012"));
  Checkpoint const loaded = store.load(12);
  check(loaded);
  CHECK(loaded == c);
  auto const latest = store.load_latest();
  REQUIRE(latest.has_value());
  CHECK(latest->first == 12);
  CHECK(latest->second == c);
  CHECK_FALSE(has_tmp_leftovers(store.dir()));

  // put replaces a record of the same name, even of another type.
  c.put_u64("f", 7);
  CHECK(c.u64("f") == 7);
  CHECK(c.size() == 11);
}

TEST_CASE("The on-disk format: raw little-endian files and a manifest with hashlib's sha256") {
  CheckpointStore store(tinylora::test::scratch_dir("checkpoint_format"));
  Checkpoint c;
  c.put("a/b", std::vector<float>{1.0f, -2.0f});
  c.put("d", std::vector<double>{0.5, std::numeric_limits<double>::infinity()});
  c.put("ints", std::vector<std::int64_t>{-1, 3});
  c.put_u64("n", 0x0102030405060708ULL);
  c.put_i64("k", -2);
  c.put_string("s", "hi");
  c.put("empty", std::vector<float>{});
  store.save(7, c);

  // Expected bytes written by hand; digests from Python: hashlib.sha256(struct.pack('<ff', 1, -2)).
  struct Want {
    std::string name, file, dtype, kind;
    std::uint64_t count, bytes;
    std::string hex_bytes, sha;
  };
  std::vector<Want> const want = {
      {"a/b", "a%2Fb.bin", "f32", "array", 2, 8, "0000803f000000c0",
       "ee4ac73c2bd27756ab82780f27c73a7bc4d3f0bb6acb37e008bc27eccd7e588b"},
      {"d", "d.bin", "f64", "array", 2, 16, "000000000000e03f000000000000f07f",
       "a9e475cdfecf0375fba0de711e71add00458bced20ccad8016b9578675f845ae"},
      {"empty", "empty.bin", "f32", "array", 0, 0, "",
       "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
      {"ints", "ints.bin", "i64", "array", 2, 16, "ffffffffffffffff0300000000000000",
       "e446b968bb6cd103e9b54f3a3a69f4c6305d6759480fdcc4709c5206cf98ae4c"},
      {"k", "k.bin", "i64", "scalar", 1, 8, "feffffffffffffff",
       "81b37f7f8b78762feb067131152a700548754f937a0668c1f327d2ee1a2d2801"},
      {"n", "n.bin", "u64", "scalar", 1, 8, "0807060504030201",
       "380b980886b7a3e726b5c2776160d7842b8f139eaea1e6acf7442cdf890e6287"},
      {"s", "s.bin", "utf8", "string", 2, 2, "6869",
       "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"},
  };
  fs::path const folder = store.dir() / "step-000000007";
  json const m = json::parse(slurp(folder / "manifest.json"));
  CHECK(m["format"] == "tinylora-checkpoint");
  CHECK(m["format_version"] == 1);
  CHECK(m["step"] == 7);
  REQUIRE(m["records"].size() == want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    auto const& r = m["records"][i];
    auto const& w = want[i];
    INFO("record " << w.name);
    CHECK(r["name"] == w.name);
    CHECK(r["file"] == w.file);
    CHECK(r["dtype"] == w.dtype);
    CHECK(r["kind"] == w.kind);
    CHECK(r["count"] == w.count);
    CHECK(r["bytes"] == w.bytes);
    CHECK(r["sha256"] == w.sha);
    CHECK(hex(slurp(folder / w.file)) == w.hex_bytes);
  }
  // The folder holds exactly the record files and the manifest, no sub-folders.
  std::size_t n_files = 0;
  for (auto const& e : fs::directory_iterator(folder)) {
    CHECK(e.is_regular_file());
    ++n_files;
  }
  CHECK(n_files == want.size() + 1);
}

TEST_CASE("Record names with '/', dots, unicode and great length map to distinct safe files") {
  CheckpointStore store(tinylora::test::scratch_dir("checkpoint_names"));
  std::vector<std::string> const names = {"a/b", "a%2Fb", "a_b", ".", "..", "../escape", "manifest.json",
                                          ".hidden", "with space", "θ/ünïcode", std::string(300, 'x'),
                                          std::string(300, 'x') + "y", std::string(100, '/'), "~"};
  Checkpoint c;
  for (std::size_t i = 0; i < names.size(); ++i) c.put_u64(names[i], i);
  store.save(1, c);
  Checkpoint const loaded = store.load(1);
  CHECK(loaded == c);
  for (std::size_t i = 0; i < names.size(); ++i) CHECK(loaded.u64(names[i]) == i);
  std::size_t n_files = 0;
  for (auto const& e : fs::directory_iterator(store.step_dir(1))) {
    CHECK(e.is_regular_file());
    CHECK(e.path().filename().string().size() < 255);
    ++n_files;
  }
  CHECK(n_files == names.size() + 1);
  CHECK_FALSE(fs::exists(store.dir() / "escape.bin"));
  CHECK_FALSE(fs::exists(store.dir() / "%2E%2E" ));

  CHECK_THROWS_WITH_AS(c.put_u64("", 1), doctest::Contains("empty record name"), Error);
  CHECK_THROWS_WITH_AS(c.put_u64("bad\xff", 1), doctest::Contains("not valid UTF-8"), Error);
}

TEST_CASE("keep_last prunes all but the newest steps, never the one just saved") {
  CheckpointStore store(tinylora::test::scratch_dir("checkpoint_prune"), 2);
  for (std::int64_t s = 1; s <= 5; ++s) {
    store.save(s, small_checkpoint(s));
    CHECK(store.steps().size() == static_cast<std::size_t>(std::min<std::int64_t>(s, 2)));
  }
  CHECK(store.steps() == std::vector<std::int64_t>{4, 5});
  CHECK(store.load(4) == small_checkpoint(4));
  CHECK(store.load(5) == small_checkpoint(5));
  // Saving an older step (a resumed run) keeps it alongside the two newest.
  store.save(3, small_checkpoint(3));
  CHECK(store.steps() == std::vector<std::int64_t>{3, 4, 5});
  CHECK_FALSE(has_tmp_leftovers(store.dir()));

  CheckpointStore one(tinylora::test::scratch_dir("checkpoint_prune_one"), 1);
  for (std::int64_t s = 0; s < 4; ++s) one.save(s * 10, small_checkpoint(s * 10));
  CHECK(one.steps() == std::vector<std::int64_t>{30});
  // Steps need not be small: 10 digits still sort and load.
  one.save(12'345'678'901, small_checkpoint(1));
  CHECK(one.steps() == std::vector<std::int64_t>{12'345'678'901});
  CHECK(fs::is_directory(one.dir() / "step-12345678901"));
  CHECK(one.load(12'345'678'901) == small_checkpoint(1));

  CHECK_THROWS_WITH_AS(CheckpointStore(one.dir(), 0), doctest::Contains("keep_last must be at least 1"), Error);
  CHECK_THROWS_WITH_AS(one.save(-1, small_checkpoint(1)), doctest::Contains("step must be >= 0"), Error);
}

TEST_CASE("Re-saving an existing step replaces it atomically") {
  CheckpointStore store(tinylora::test::scratch_dir("checkpoint_resave"));
  store.save(4, small_checkpoint(4));
  store.save(5, small_checkpoint(5));
  Checkpoint replacement;
  replacement.put("other", std::vector<double>{1, 2, 3});
  store.save(5, replacement);
  CHECK(store.steps() == std::vector<std::int64_t>{4, 5});
  Checkpoint const got = store.load(5);
  CHECK(got == replacement);
  CHECK_FALSE(got.has("adapter/theta"));  // the old record files are gone with the old folder
  CHECK_FALSE(has_tmp_leftovers(store.dir()));
  auto const latest = store.load_latest();
  REQUIRE(latest.has_value());
  CHECK(latest->first == 5);
  CHECK(latest->second == replacement);
  // An empty checkpoint is valid too.
  store.save(5, Checkpoint{});
  CHECK(store.load(5).empty());
}

TEST_CASE("load_latest skips a corrupt newest checkpoint, and load says why") {
  struct Damage {
    char const* what;
    char const* reason;  // expected in the error message
    void (*apply)(CheckpointStore const&);
  };
  std::vector<Damage> const damages = {
      {"flipped byte", "sha256 mismatch",
       [](CheckpointStore const& s) {
         fs::path const f = record_file(s, 3, "adapter/theta");
         std::string bytes = slurp(f);
         bytes[5] = static_cast<char>(bytes[5] ^ 0x10);
         spit(f, bytes);
       }},
      {"truncated file", "truncated (expected 12 bytes, got 7)",
       [](CheckpointStore const& s) { fs::resize_file(record_file(s, 3, "adapter/theta"), 7); }},
      {"missing manifest", "missing manifest.json",
       [](CheckpointStore const& s) { fs::remove(s.step_dir(3) / "manifest.json"); }},
      {"missing record file", "the record file is missing",
       [](CheckpointStore const& s) { fs::remove(record_file(s, 3, "note")); }},
      {"unknown format version", "unknown format version 99 (expected 1)",
       [](CheckpointStore const& s) {
         json m = json::parse(slurp(s.step_dir(3) / "manifest.json"));
         m["format_version"] = 99;
         spit(s.step_dir(3) / "manifest.json", m.dump());
       }},
      {"garbled manifest", "is not valid JSON",
       [](CheckpointStore const& s) {
         std::string text = slurp(s.step_dir(3) / "manifest.json");
         text.resize(text.size() / 2);
         spit(s.step_dir(3) / "manifest.json", text);
       }},
      {"manifest sha edited", "sha256 mismatch",
       [](CheckpointStore const& s) {
         json m = json::parse(slurp(s.step_dir(3) / "manifest.json"));
         m["records"][0]["sha256"] = std::string(64, '0');
         spit(s.step_dir(3) / "manifest.json", m.dump());
       }},
  };
  for (auto const& d : damages) {
    SUBCASE(d.what) {
      CheckpointStore store(tinylora::test::scratch_dir("checkpoint_corrupt"), 5);
      for (std::int64_t s = 1; s <= 3; ++s) store.save(s, small_checkpoint(s));
      d.apply(store);
      std::optional<std::pair<std::int64_t, Checkpoint>> latest;
      std::string const warning =
          capture_stderr(store.dir().parent_path() / "checkpoint_corrupt_stderr.txt", [&] { latest = store.load_latest(); });
      REQUIRE(latest.has_value());
      CHECK(latest->first == 2);
      CHECK(latest->second == small_checkpoint(2));
      CHECK(warning.find("skipping checkpoint") != std::string::npos);
      CHECK(warning.find("step-000000003") != std::string::npos);
      CHECK(warning.find(d.reason) != std::string::npos);
      CHECK_THROWS_WITH_AS(store.load(3), doctest::Contains(d.reason), Error);
      CHECK_THROWS_WITH_AS(store.load(3), doctest::Contains("step-000000003"), Error);
      CHECK_THROWS_WITH_AS(store.load(3), doctest::Contains("Hint:"), Error);
      CHECK(fs::is_directory(store.step_dir(3)));  // skipped, not deleted
      CHECK(store.steps() == std::vector<std::int64_t>{1, 2, 3});
    }
  }
}

TEST_CASE("Nothing loadable: load_latest is nullopt; load of a missing step names it") {
  CheckpointStore store(tinylora::test::scratch_dir("checkpoint_empty"));
  CHECK_FALSE(store.load_latest().has_value());
  CHECK(store.steps().empty());
  CHECK_THROWS_WITH_AS(store.load(3), doctest::Contains("step-000000003': no such folder"), Error);
  // Folders that only look like steps are not steps.
  fs::create_directories(store.dir() / "step-12");
  fs::create_directories(store.dir() / "step-0000000001");
  fs::create_directories(store.dir() / "step-00000000x");
  spit(store.dir() / "step-000000004", "a file, not a folder");
  CHECK(store.steps().empty());
}

TEST_CASE("A leftover .tmp-* folder of a killed save is ignored, then removed by the next save") {
  CheckpointStore store(tinylora::test::scratch_dir("checkpoint_leftover"));
  store.save(1, small_checkpoint(1));
  // What a save killed before its rename leaves: a complete-looking but unrenamed folder, and a
  // half-written one.
  fs::path const killed = store.dir() / ".tmp-step-000000002-999999";
  fs::copy(store.step_dir(1), killed);
  fs::path const half = store.dir() / ".tmp-step-000000003-999998";
  fs::create_directories(half);
  spit(half / "adapter%2Ftheta.bin", "abc");
  CHECK(store.steps() == std::vector<std::int64_t>{1});
  auto const latest = store.load_latest();
  REQUIRE(latest.has_value());
  CHECK(latest->first == 1);
  store.save(4, small_checkpoint(4));
  CHECK_FALSE(fs::exists(killed));
  CHECK_FALSE(fs::exists(half));
  CHECK_FALSE(has_tmp_leftovers(store.dir()));
  CHECK(store.steps() == std::vector<std::int64_t>{1, 4});
}

TEST_CASE("Accessors of the wrong type or a missing name throw, naming the record") {
  Checkpoint c;
  c.put("theta", std::vector<float>{1, 2});
  c.put("m", std::vector<double>{1});
  c.put("ids", std::vector<std::int64_t>{1});
  c.put_u64("seed", 3);
  c.put_i64("step", 4);
  c.put_string("name", "x");
  CHECK(c.has("theta"));
  CHECK_FALSE(c.has("nope"));
  CHECK_THROWS_WITH_AS(c.floats("nope"), doctest::Contains("Checkpoint::floats(): no record named 'nope'"), Error);
  CHECK_THROWS_WITH_AS(c.string("nope"), doctest::Contains("'theta'"), Error);  // lists what exists
  CHECK_THROWS_WITH_AS(c.doubles("theta"),
                       doctest::Contains("record 'theta' is an f32 array (expected an f64 array). Hint: read it with floats()"),
                       Error);
  CHECK_THROWS_WITH_AS(c.floats("m"), doctest::Contains("read it with doubles()"), Error);
  CHECK_THROWS_WITH_AS(c.i64("ids"), doctest::Contains("read it with int64s()"), Error);
  CHECK_THROWS_WITH_AS(c.int64s("step"), doctest::Contains("read it with i64()"), Error);
  CHECK_THROWS_WITH_AS(c.i64("seed"), doctest::Contains("read it with u64()"), Error);
  CHECK_THROWS_WITH_AS(c.u64("step"), doctest::Contains("read it with i64()"), Error);
  CHECK_THROWS_WITH_AS(c.u64("name"), doctest::Contains("read it with string()"), Error);
  CHECK_THROWS_WITH_AS(c.string("seed"), doctest::Contains("Checkpoint::string(): record 'seed' is a u64 scalar"), Error);
  CHECK_THROWS_AS(c.type("nope"), Error);
  CHECK(c.erase("theta"));
  CHECK_FALSE(c.erase("theta"));
  CHECK_THROWS_AS(c.floats("theta"), Error);
}

namespace {

/// The contents a writer saves at (step, version): ~3 MB, every value a function of both.
Checkpoint big_checkpoint(std::int64_t step, std::uint64_t version, std::size_t n) {
  Checkpoint c;
  std::vector<float> theta(n);  // (n,)
  for (std::size_t i = 0; i < n; ++i) theta[i] = static_cast<float>(step) * 1e-3f + static_cast<float>(i % 4099) + static_cast<float>(version);
  std::vector<double> m(n / 4);  // (n / 4,)
  for (std::size_t i = 0; i < m.size(); ++i) m[i] = static_cast<double>(step) + 1e-6 * static_cast<double>(i) - static_cast<double>(version);
  c.put("adapter/theta", theta);
  c.put("optim/adam/m", m);
  c.put_i64("step", step);
  c.put_u64("version", version);
  c.put_string("note", "step " + std::to_string(step) + " version " + std::to_string(version));
  return c;
}

}  // namespace

TEST_CASE("A writer SIGKILLed mid-save never leaves load_latest returning a corrupt checkpoint") {
  std::uint64_t const seed = tinylora::test::seed(20260204);
  tinylora::CounterRng rng(seed, tinylora::streams::of(tinylora::streams::kTest, 77));
  constexpr std::size_t kN = 1 << 19;
  constexpr int kTrials = 6;
  int total_saves_seen = 0;
  for (int trial = 0; trial < kTrials; ++trial) {
    fs::path const dir = tinylora::test::scratch_dir("checkpoint_sigkill_" + std::to_string(trial));
    int pipe_fds[2];
    REQUIRE(::pipe(pipe_fds) == 0);
    std::fflush(nullptr);
    pid_t const child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      // The writer: every step is saved twice (the second a re-save with another version), so a
      // kill can land in a fresh save, a replacement or the pruning; it signals its first save.
      ::close(pipe_fds[0]);
      try {
        CheckpointStore store(dir, 2);
        for (int i = 0; i < 100000; ++i) {
          std::int64_t const step = i / 2;
          store.save(step, big_checkpoint(step, static_cast<std::uint64_t>(i % 2), kN));
          if (i == 0) {
            char const one = 1;
            if (::write(pipe_fds[1], &one, 1) != 1) ::_exit(3);
          }
        }
      } catch (...) {
        ::_exit(2);
      }
      ::_exit(0);
    }
    ::close(pipe_fds[1]);
    char got = 0;
    REQUIRE(::read(pipe_fds[0], &got, 1) == 1);
    ::close(pipe_fds[0]);
    auto const delay_ms = static_cast<int>(5 + 300 * rng.uniform(static_cast<std::uint64_t>(trial)));
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    REQUIRE(::kill(child, SIGKILL) == 0);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFSIGNALED(status));  // killed, not finished or failed
    CHECK(WTERMSIG(status) == SIGKILL);

    CheckpointStore store(dir, 2);
    auto const steps = store.steps();
    MESSAGE("trial " << trial << ": killed after " << delay_ms << " ms; steps on disk: " << steps.size()
                     << std::string(has_tmp_leftovers(dir) ? ", with .tmp leftovers" : ""));
    // Every step folder is complete (they only appear by rename), so every one verifies.
    for (auto const s : steps) CHECK_NOTHROW((void)store.load(s));
    std::optional<std::pair<std::int64_t, Checkpoint>> latest;
    std::string const warnings = capture_stderr(dir.parent_path() / "checkpoint_sigkill_stderr.txt",
                                                [&] { latest = store.load_latest(); });
    CHECK(warnings.empty());
    REQUIRE(latest.has_value());  // the first save had finished before the kill
    auto const& [step, c] = *latest;
    CHECK(step == steps.back());
    CHECK(c.i64("step") == step);
    std::uint64_t const version = c.u64("version");
    CHECK(version <= 1);
    CHECK(c == big_checkpoint(step, version, kN));
    total_saves_seen += static_cast<int>(2 * step + static_cast<std::int64_t>(version) + 1);

    // The next save clears whatever the kill left behind.
    store.save(step + 1, big_checkpoint(step + 1, 0, 16));
    CHECK_FALSE(has_tmp_leftovers(dir));
    CHECK(store.load_latest()->first == step + 1);
  }
  MESSAGE("saves completed by the killed writers: " << total_saves_seen);
}
