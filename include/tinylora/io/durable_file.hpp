// tinylora/io/durable_file.hpp: the one temp-file-and-rename helper. A file that a reader must
// never see half-written (a checkpoint, a result file, a safetensors file, adapter_config.json)
// is written to a sibling temporary, fsynced, renamed over its name (rename(2) is atomic on one
// file system) and its folder fsynced, so that after a crash the name holds either the old or
// the new bytes, never a mixture:
//
//   write_atomically(path, bytes, op)   = write_file(temporary_for(path), bytes, op)
//                                          + publish(temporary_for(path), path, op)
//   publish(tmp, path, op)              = fsync_file(tmp) + rename_path(tmp, path) + fsync_directory
//
// Every function throws tinylora::Error naming `op` (the caller, e.g. "CheckpointStore::save()"),
// the path and the system's reason, with a hint; POSIX only (open, write, fsync, rename).
#pragma once

#include <fcntl.h>
#include <stdio.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>

#include "tinylora/core/error.hpp"

namespace tinylora::io {

/// The system's text for errno value `err`.
inline std::string errno_text(int err) { return std::generic_category().message(err); }

/// An owned POSIX file descriptor.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd const&) = delete;
  Fd& operator=(Fd const&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  /// Closes now and reports the error (close can report a failed delayed write).
  int close() {
    int const r = ::close(fd_);
    fd_ = -1;
    return r;
  }

 private:
  int fd_;
};

/// The sibling temporary that write_atomically() writes `path` through: `<path>.tmp-<pid>`, so two
/// processes never share one and leftovers of a killed writer are recognisable.
inline std::filesystem::path temporary_for(std::filesystem::path const& path) {
  auto tmp = path;
  tmp += ".tmp-" + std::to_string(::getpid());
  return tmp;
}

/// The folder holding `path` ("." for a bare name).
inline std::filesystem::path folder_of(std::filesystem::path const& path) {
  return path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path();
}

/// Writes `bytes` to `path` (created or truncated) and fsyncs it.
inline void write_file(std::filesystem::path const& path, std::string_view bytes, char const* op) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) {
    int const err = errno;
    fail(op, ": cannot create '", path.string(), "' (", errno_text(err),
         "). Hint: check that the folder exists and is writable and that the disk is not full.");
  }
  std::size_t done = 0;
  while (done < bytes.size()) {
    ::ssize_t const n = ::write(fd.get(), bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      int const err = errno;
      fail(op, ": writing '", path.string(), "' failed after ", done, " of ", bytes.size(), " bytes (",
           errno_text(err), "). Hint: check free disk space and quotas.");
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd.get()) != 0) {
    int const err = errno;
    fail(op, ": fsync of '", path.string(), "' failed (", errno_text(err),
         "). Hint: the disk or network file system reported an I/O error; check it and write again.");
  }
  if (fd.close() != 0) {
    int const err = errno;
    fail(op, ": closing '", path.string(), "' failed (", errno_text(err),
         "). Hint: check free disk space and the file system.");
  }
}

/// fsyncs an existing file written by someone else (an HDF5 library, an ofstream).
inline void fsync_file(std::filesystem::path const& path, char const* op) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    int const err = errno;
    fail(op, ": cannot open '", path.string(), "' to fsync it (", errno_text(err),
         "). Hint: was it removed while being written?");
  }
  if (::fsync(fd.get()) != 0) {
    int const err = errno;
    fail(op, ": fsync of '", path.string(), "' failed (", errno_text(err),
         "). Hint: the disk or network file system reported an I/O error; check it and write again.");
  }
}

/// fsyncs a folder, so that the names created, renamed or removed in it are durable. File systems
/// that cannot fsync a folder (EINVAL) need no such step and are accepted.
inline void fsync_directory(std::filesystem::path const& dir, char const* op) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) {
    int const err = errno;
    fail(op, ": cannot open folder '", dir.string(), "' to fsync it (", errno_text(err),
         "). Hint: check the folder's permissions.");
  }
  if (::fsync(fd.get()) != 0 && errno != EINVAL) {
    int const err = errno;
    fail(op, ": fsync of folder '", dir.string(), "' failed (", errno_text(err),
         "). Hint: the file system reported an I/O error; check it and write again.");
  }
}

/// rename(2): atomically replaces `to` (a file, or an empty folder by a folder) by `from`.
inline void rename_path(std::filesystem::path const& from, std::filesystem::path const& to, char const* op) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    int const err = errno;
    fail(op, ": renaming '", from.string(), "' to '", to.string(), "' failed (", errno_text(err),
         "). Hint: check the folder's permissions; the target must not be a folder of another kind, nor on "
         "another file system.");
  }
}

/// Atomically swaps two existing paths (Linux renameat2 RENAME_EXCHANGE). False when the kernel
/// or file system cannot (the caller then falls back to two renames).
inline bool exchange_paths(std::filesystem::path const& a, std::filesystem::path const& b, char const* op) {
#if defined(__linux__) && defined(RENAME_EXCHANGE)
  if (::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) == 0) return true;
  int const err = errno;
  if (err == EINVAL || err == ENOSYS || err == ENOTSUP) return false;
  fail(op, ": exchanging '", a.string(), "' and '", b.string(), "' failed (", errno_text(err),
       "). Hint: check the folder's permissions.");
#else
  (void)a;
  (void)b;
  (void)op;
  return false;
#endif
}

/// Makes the finished temporary `tmp` durable under the name `path`: fsync, rename, fsync folder.
inline void publish(std::filesystem::path const& tmp, std::filesystem::path const& path, char const* op) {
  fsync_file(tmp, op);
  rename_path(tmp, path, op);
  fsync_directory(folder_of(path), op);
}

/// Writes `bytes` as `path` atomically (see the top of this file); on failure `path` is untouched
/// and the temporary is removed.
inline void write_atomically(std::filesystem::path const& path, std::string_view bytes, char const* op) {
  auto const tmp = temporary_for(path);
  try {
    write_file(tmp, bytes, op);
    rename_path(tmp, path, op);
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw;
  }
  fsync_directory(folder_of(path), op);
}

}  // namespace tinylora::io
