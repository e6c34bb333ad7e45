// Opening files named by users and model directories. A path may name anything: a device
// (/dev/zero never ends), a FIFO (opening it blocks until a writer comes), a directory. So every
// file we read is first checked to be a regular file, and files read whole into memory
// (configs, policies, tokenizers, templates) are capped in size, each with an error that names
// the file, its size and the limit instead of reading gigabytes first.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "core/status.h"

namespace headwise {

// Caps for files read whole. Real files are far smaller (config.json ~1 KiB, policies and
// head profiles ~10 KiB, tokenizer_config.json with every added token and a chat template
// ~1 MiB, the largest tokenizer.json we know of (Gemma 3's, 262k pieces) ~33 MiB); the caps
// only stop a wrong path from filling memory.
inline constexpr size_t kMaxConfigFileBytes = size_t{16} << 20;      // JSON configs, policies, TSVs
inline constexpr size_t kMaxTokenizerFileBytes = size_t{256} << 20;  // tokenizer.json, .model

// Opens `path` read-only without blocking (a FIFO does not wait for a writer) and checks it is a
// regular file; anything else (directory, device, FIFO, socket) is InvalidArgument naming what
// it is. Returns the descriptor (the caller closes it) and the file's size in `size`.
StatusOr<int> OpenRegularFile(const std::string& path, size_t* size);

// The whole content of a regular file of at most `max_bytes` bytes. `what` names the kind of
// file in the error: "PATH: N bytes is over the limit of M for a(n) WHAT".
StatusOr<std::string> ReadSmallFile(const std::string& path, size_t max_bytes,
                                    std::string_view what);

}  // namespace headwise
