// tinylora/core/profile.hpp: where the time goes, per operation, so the next optimization is chosen
// by measurement (bench/op_profile). TINYLORA_PROFILE_SCOPE("name") times the rest of its block;
// the table keeps each name's exclusive time (its nested scopes subtracted), summed over threads.
// Compiled to nothing unless TINYLORA_PROFILE is defined before the first tinylora include.
#pragma once

#include <algorithm>
#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace tinylora::profile {

struct Entry {
  std::string name;
  double seconds = 0;  // exclusive, summed over threads
  long long calls = 0;
};

/// The process-wide table.
class Table {
 public:
  static Table& instance() {
    static Table t;
    return t;
  }
  void add(char const* name, double seconds) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto& e = entries_[name];
    e.seconds += seconds;
    e.calls += 1;
  }
  void reset() {
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.clear();
  }
  /// Entries by decreasing time.
  std::vector<Entry> entries() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<Entry> out;
    for (auto const& [name, e] : entries_) out.push_back({name, e.seconds, e.calls});
    std::sort(out.begin(), out.end(), [](Entry const& a, Entry const& b) { return a.seconds > b.seconds; });
    return out;
  }

 private:
  struct Sum {
    double seconds = 0;
    long long calls = 0;
  };
  mutable std::mutex mutex_;
  std::map<std::string, Sum> entries_;
};

/// Times its lifetime; on exit adds (elapsed - nested scopes' elapsed) under its name and its
/// elapsed to the enclosing scope of the same thread.
class Scope {
 public:
  explicit Scope(char const* name) : name_(name), parent_(current()), start_(Clock::now()) { current() = this; }
  ~Scope() {
    double const elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
    current() = parent_;
    if (parent_ != nullptr) parent_->nested_ += elapsed;
    Table::instance().add(name_, elapsed - nested_);
  }
  Scope(Scope const&) = delete;
  Scope& operator=(Scope const&) = delete;

 private:
  using Clock = std::chrono::steady_clock;
  static Scope*& current() {
    thread_local Scope* top = nullptr;
    return top;
  }
  char const* name_;
  Scope* parent_;
  Clock::time_point start_;
  double nested_ = 0;
};

}  // namespace tinylora::profile

#define TINYLORA_PROFILE_CONCAT2(a, b) a##b
#define TINYLORA_PROFILE_CONCAT(a, b) TINYLORA_PROFILE_CONCAT2(a, b)
#if defined(TINYLORA_PROFILE)
#define TINYLORA_PROFILE_SCOPE(name) ::tinylora::profile::Scope TINYLORA_PROFILE_CONCAT(tinylora_profile_scope_, __LINE__)(name)
#else
#define TINYLORA_PROFILE_SCOPE(name) static_cast<void>(0)
#endif
