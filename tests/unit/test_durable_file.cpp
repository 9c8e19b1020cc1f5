// Tests of io/durable_file.hpp, the one temp-file-and-rename helper behind checkpoints, result
// files, safetensors files and adapter configs: the bytes arrive, nothing is left behind, a
// failure leaves the old file as it was and says who failed and why, and a writer killed at a
// random moment (SIGKILL from a parent process) never leaves a mixture of old and new bytes.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>

#include "../support.hpp"
#include "tinylora/io/durable_file.hpp"

namespace fs = std::filesystem;
using namespace tinylora;

namespace {
std::string slurp(fs::path const& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
}  // namespace

TEST_CASE("write_atomically: writes the bytes, replaces an existing file, leaves no temporary") {
  auto const dir = test::scratch_dir("durable_file_write");
  auto const path = dir / "a.bin";
  io::write_atomically(path, "first", "test");
  CHECK(slurp(path) == "first");
  std::string const binary("\0\1\2\xff", 4);
  io::write_atomically(path, binary, "test");
  CHECK(slurp(path) == binary);
  io::write_atomically(path, "", "test");
  CHECK(fs::file_size(path) == 0);
  CHECK(!fs::exists(io::temporary_for(path)));
  CHECK(io::temporary_for(path).filename().string() == "a.bin.tmp-" + std::to_string(::getpid()));
  CHECK(io::folder_of("bare.h5") == fs::path("."));
  io::write_atomically("bare_name_in_cwd.tmpfile", "x", "test");  // a bare name: the folder is "."
  CHECK(slurp("bare_name_in_cwd.tmpfile") == "x");
  fs::remove("bare_name_in_cwd.tmpfile");
}

TEST_CASE("write_atomically: a failure names the caller, the path and the reason; the target is untouched") {
  auto const dir = test::scratch_dir("durable_file_fail");
  // No such folder: the temporary cannot be created.
  CHECK_THROWS_WITH_AS(io::write_atomically(dir / "missing" / "a.bin", "x", "MyTool::save()"),
                       doctest::Contains("MyTool::save(): cannot create '"), Error);
  // The target is a non-empty folder: rename(2) fails; the folder keeps its contents and the
  // temporary is removed.
  fs::create_directories(dir / "occupied");
  io::write_atomically(dir / "occupied" / "keep.txt", "kept", "test");
  CHECK_THROWS_WITH_AS(io::write_atomically(dir / "occupied", "x", "MyTool::save()"),
                       doctest::Contains("MyTool::save(): renaming '"), Error);
  CHECK(slurp(dir / "occupied" / "keep.txt") == "kept");
  CHECK(!fs::exists(io::temporary_for(dir / "occupied")));
  CHECK_THROWS_WITH_AS(io::fsync_file(dir / "nothing.bin", "MyTool::load()"),
                       doctest::Contains("MyTool::load(): cannot open '"), Error);
  CHECK_THROWS_WITH_AS(io::publish(dir / "nothing.tmp", dir / "nothing.bin", "MyTool::publish()"),
                       doctest::Contains("MyTool::publish(): cannot open"), Error);
  CHECK(!fs::exists(dir / "nothing.bin"));
}

TEST_CASE("exchange_paths swaps two folders atomically (or reports that it cannot)") {
  auto const dir = test::scratch_dir("durable_file_exchange");
  fs::create_directories(dir / "x");
  fs::create_directories(dir / "y");
  io::write_atomically(dir / "x" / "f", "from x", "test");
  io::write_atomically(dir / "y" / "f", "from y", "test");
  if (io::exchange_paths(dir / "x", dir / "y", "test")) {
    CHECK(slurp(dir / "x" / "f") == "from y");
    CHECK(slurp(dir / "y" / "f") == "from x");
  } else {
    MESSAGE("this file system has no RENAME_EXCHANGE; callers fall back to two renames");
  }
  CHECK_THROWS_WITH_AS(io::exchange_paths(dir / "x", dir / "absent", "MyTool::swap()"),
                       doctest::Contains("MyTool::swap(): exchanging '"), Error);
}

TEST_CASE("a writer killed at a random moment leaves the old bytes or the new, never a mixture") {
  auto const seed = test::seed(2024);
  std::mt19937_64 rng(seed);
  auto const dir = test::scratch_dir("durable_file_kill");
  auto const path = dir / "state.bin";
  std::string const old_bytes(1 << 20, 'A');   // 1 MiB of 'A'
  std::string const new_bytes(3 << 20, 'B');   // 3 MiB of 'B': a write takes several syscalls
  int old_seen = 0, new_seen = 0;
  for (int trial = 0; trial < 24; ++trial) {
    io::write_atomically(path, old_bytes, "test");
    pid_t const child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {  // the writer: rewrites the file forever until killed
      for (;;) {
        try {
          io::write_atomically(path, new_bytes, "child");
        } catch (...) {
          ::_exit(3);
        }
      }
    }
    ::usleep(static_cast<useconds_t>(std::uniform_int_distribution<int>(0, 20000)(rng)));
    ::kill(child, SIGKILL);
    int status = 0;
    ::waitpid(child, &status, 0);
    REQUIRE_MESSAGE(WIFSIGNALED(status), "the writer stopped by itself (status ", status, "): it failed to write");
    std::string const now = slurp(path);
    INFO("trial ", trial, ": the file holds ", now.size(), " bytes");
    bool const is_old = now == old_bytes;
    bool const is_new = now == new_bytes;
    CHECK((is_old || is_new));
    old_seen += is_old;
    new_seen += is_new;
    fs::remove(dir / ("state.bin.tmp-" + std::to_string(child)));  // what a killed writer leaves
  }
  MESSAGE("24 kills: old bytes seen ", old_seen, " times, new bytes ", new_seen, " times");
}
