// File helpers: every output is written to a temporary file beside its target and renamed over it,
// so a crash or an error never leaves a half-written file and never destroys the previous one.
#pragma once
#include <string>

namespace ada {

// Write `bytes` to `path` atomically (temp file in the same folder, fsync, rename).
void write_file_atomic(const std::string& path, const std::string& bytes);
// Whole file as bytes; throws ada::Error naming the path when it cannot be read.
std::string read_file(const std::string& path);
bool file_exists(const std::string& path);
void make_dirs(const std::string& path);  // mkdir -p

}  // namespace ada
