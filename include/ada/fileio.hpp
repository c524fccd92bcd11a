// File helpers: every output is written to a temporary file beside its target and renamed over it,
// so a crash or an error never leaves a half-written file and never destroys the previous one.
#pragma once
#include <cstdint>
#include <cstddef>
#include <string>
#include <vector>

namespace ada {

// Write `bytes` to `path` atomically (temp file in the same folder, fsync, rename).
void write_file_atomic(const std::string& path, const std::string& bytes);
// The same for a file made of pieces, written in order without first copying them into one string.
struct ByteSpan {
  const void* data;
  size_t size;
};
void write_file_atomic(const std::string& path, const std::vector<ByteSpan>& parts);
// Whole file as bytes; throws ada::Error naming the path when it cannot be read.
std::string read_file(const std::string& path);

// A file read by byte ranges, so that a large file (a checkpoint) goes straight into the buffers
// that keep it instead of through a copy of the whole file. A regular file is read with pread;
// anything else (a pipe) is read whole on opening and served from memory. Errors name the path.
class FileReader {
 public:
  explicit FileReader(const std::string& path);
  ~FileReader();
  FileReader(const FileReader&) = delete;
  FileReader& operator=(const FileReader&) = delete;
  uint64_t size() const { return size_; }
  // Exactly n bytes from `offset` into dst; throws when the file ends before offset + n.
  void read(uint64_t offset, uint64_t n, void* dst) const;

 private:
  std::string path_;
  int fd_ = -1;        // open for a regular file, else -1
  std::string whole_;  // the content of anything else
  uint64_t size_ = 0;
};
bool file_exists(const std::string& path);
void make_dirs(const std::string& path);  // mkdir -p

}  // namespace ada
