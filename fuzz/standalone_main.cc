// The driver that every fuzz target links in builds without libFuzzer (GCC, and the
// sanitizer builds): it runs LLVMFuzzerTestOneInput over inputs from files, so that
// `make test` smoke-runs every target and a crash file from `make fuzz` can be replayed
// here too.
//
//   <target> FILE...                 runs each file once (reproducing a crash)
//   <target> [FLAGS] DIR...          runs every file in the folders, then -mutations=N
//                                    deterministic mutations of them (-seed=S)
// Flags: -mutations=N (default 1000), -seed=S (default 1), -max_len=L (default: the
// largest input, at least 4096), -artifact_prefix=P (default ./). Other -flag=value
// arguments (libFuzzer's) are ignored, so the same command line works for both.
//
// No coverage feedback: the mutations are blind (bit flips, interesting bytes and numbers,
// insertions, deletions, splices), but the same every run. If an input crashes the target
// (abort, a failed FUZZ_CHECK, a signal or a sanitizer report), it is written to
// <prefix>crash-<hash> before the process dies, and the path printed.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
// Present in sanitizer builds only: called when a sanitizer ends the process.
extern "C" void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

namespace {

namespace fs = std::filesystem;

// The input being run, for the crash handlers.
std::string g_input;
std::string g_artifact_prefix = "./";
const char* g_argv0 = "";
bool g_saved = false;

void WriteStderr(const char* s) {
  ssize_t ignored = ::write(2, s, std::strlen(s));
  (void)ignored;
}

// Writes g_input to <prefix>crash-<FNV-1a hash>. Async-signal-safe apart from reading
// g_input, which no other thread touches.
void SaveCurrentInput() {
  if (g_saved) return;
  g_saved = true;
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : g_input) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  char name[4096];
  static const char kHex[] = "0123456789abcdef";
  size_t n = g_artifact_prefix.size();
  if (n > sizeof(name) - 40) n = sizeof(name) - 40;
  std::memcpy(name, g_artifact_prefix.data(), n);
  std::memcpy(name + n, "crash-", 6);
  n += 6;
  for (int i = 15; i >= 0; --i) name[n++] = kHex[(h >> (4 * i)) & 0xF];
  name[n] = '\0';
  int fd = ::open(name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    WriteStderr("\nstandalone fuzz driver: cannot write the crashing input to ");
    WriteStderr(name);
    WriteStderr("\n");
    return;
  }
  size_t done = 0;
  while (done < g_input.size()) {
    ssize_t w = ::write(fd, g_input.data() + done, g_input.size() - done);
    if (w <= 0) break;
    done += static_cast<size_t>(w);
  }
  ::close(fd);
  WriteStderr("\nstandalone fuzz driver: the crashing input is in ");
  WriteStderr(name);
  WriteStderr("\n  reproduce: ");
  WriteStderr(g_argv0);
  WriteStderr(" ");
  WriteStderr(name);
  WriteStderr("\n");
}

void OnSignal(int sig) {
  SaveCurrentInput();
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

void InstallCrashHandlers() {
  // Sanitizers handle SEGV & co. themselves (and print the better report): there, save the
  // input from their death callback; elsewhere from the signals. FUZZ_CHECK aborts, which
  // no sanitizer intercepts by default.
  if (__sanitizer_set_death_callback != nullptr) {
    __sanitizer_set_death_callback(SaveCurrentInput);
  } else {
    for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL}) ::signal(sig, OnSignal);
  }
  ::signal(SIGABRT, OnSignal);
}

void RunOne(const std::string& input) {
  g_input = input;
  // A copy in a buffer of exactly its size, so ASan catches reads past the end.
  std::vector<uint8_t> exact(input.begin(), input.end());
  LLVMFuzzerTestOneInput(exact.empty() ? nullptr : exact.data(), exact.size());
}

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  out->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return !in.bad();
}

// SplitMix64: the same sequence on every machine.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n). REQUIRES: n > 0.
  size_t Below(size_t n) { return static_cast<size_t>(Next() % n); }

 private:
  uint64_t state_;
};

// Tokens that matter to the parsers under test: JSON syntax and edge-case numbers, UTF-8
// edge cases, CSV quoting, the fuzz targets' separators.
// clang-format off
const char* const kTokens[] = {
    "null", "true", "false", "{", "}", "[", "]", ",", ":", "\"", "\\", "\\u0000", "\\ud800",
    "\\udc00", "\\ud83d\\ude00", "\\\"", "-0", "1e999", "-1", "0.5", "18446744073709551615",
    "18446744073709551616", "9223372036854775807", "9223372036854775808", "4294967296",
    "\xef\xbb\xbf", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xff", "\xc0\x80",
    "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe4\xb8\xad", "\r\n", "\n", "\t", "\"\"", ",\"",
    "\"\n", "\x1f", " ", "##", "\xc4\xa0", "[UNK]", "[CLS]", "[SEP]", "[PAD]", "<s>", "</s>",
    "<pad>", "F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "\"dtype\"", "\"shape\"",
    "\"data_offsets\"", "\"__metadata__\"", "\"text\"", "\"label\"", "\"model\"", "\"vocab\"",
    "\"merges\"", "\"type\"", "\"WordPiece\"", "\"BPE\"", "\"ByteLevel\""};
// clang-format on

const uint64_t kNumbers[] = {
    0,          1,          2,          7,          8,          16,         127,        128,
    255,        256,        1023,       1024,       4095,       4096,       65535,      65536,
    1048575,    1048576,    1048577,    100000000,  100000001,  2147483647, 2147483648, 4294967295,
    4294967296, 1ull << 40, 1ull << 53, 1ull << 62, 1ull << 63, UINT64_MAX};

void Mutate(Rng& rng, const std::vector<std::string>& corpus, size_t max_len, std::string* s) {
  const size_t steps = 1 + rng.Below(4);
  for (size_t step = 0; step < steps; ++step) {
    switch (rng.Below(11)) {
      case 0:  // flip a bit
        if (!s->empty()) (*s)[rng.Below(s->size())] ^= static_cast<char>(1u << rng.Below(8));
        break;
      case 1:  // a random byte
        if (!s->empty()) (*s)[rng.Below(s->size())] = static_cast<char>(rng.Next());
        break;
      case 2: {  // insert random bytes
        std::string bytes(1 + rng.Below(8), '\0');
        for (char& c : bytes) c = static_cast<char>(rng.Next());
        s->insert(rng.Below(s->size() + 1), bytes);
        break;
      }
      case 3:  // erase a range
        if (!s->empty()) {
          size_t at = rng.Below(s->size());
          s->erase(at, 1 + rng.Below(std::min<size_t>(32, s->size() - at)));
        }
        break;
      case 4:  // copy a range elsewhere
        if (!s->empty()) {
          size_t from = rng.Below(s->size());
          std::string piece =
              s->substr(from, 1 + rng.Below(std::min<size_t>(64, s->size() - from)));
          s->insert(rng.Below(s->size() + 1), piece);
        }
        break;
      case 5: {  // splice with another input
        const std::string& other = corpus[rng.Below(corpus.size())];
        size_t keep = rng.Below(s->size() + 1);
        size_t from = rng.Below(other.size() + 1);
        *s = s->substr(0, keep) + other.substr(from);
        break;
      }
      case 6: {  // insert or overwrite with a token
        std::string token = kTokens[rng.Below(std::size(kTokens))];
        size_t at = rng.Below(s->size() + 1);
        if (rng.Below(2) == 0) {
          s->insert(at, token);
        } else {
          s->replace(at, std::min(token.size(), s->size() - at), token);
        }
        break;
      }
      case 7: {  // replace a run of digits with an edge-case number
        if (s->empty()) break;
        size_t at = s->find_first_of("0123456789", rng.Below(s->size()));
        if (at == std::string::npos) at = s->find_first_of("0123456789");
        if (at == std::string::npos) break;
        size_t end = s->find_first_not_of("0123456789", at);
        if (end == std::string::npos) end = s->size();
        uint64_t v = kNumbers[rng.Below(std::size(kNumbers))] + rng.Below(3) - 1;
        s->replace(at, end - at, std::to_string(v));
        break;
      }
      case 8: {  // an edge-case little-endian u64 (e.g. a safetensors header length)
        uint64_t v = kNumbers[rng.Below(std::size(kNumbers))];
        size_t at = rng.Below(4) == 0 ? 0 : rng.Below(s->size() + 1);
        std::string bytes(reinterpret_cast<const char*>(&v), 8);
        s->replace(at, std::min<size_t>(8, s->size() - at), bytes);
        break;
      }
      case 9:  // truncate
        s->resize(rng.Below(s->size() + 1));
        break;
      case 10:  // an interesting byte
        if (!s->empty()) {
          static const char kBytes[] = {'\0', '\x01', '\x7f', '\x80', '\xff', '"',   '\\', ',',
                                        '\n', '\r',   '\t',   ' ',    '0',    '9',   '-',  '.',
                                        'e',  '{',    '[',    ':',    '#',    '\x1f'};
          (*s)[rng.Below(s->size())] = kBytes[rng.Below(sizeof(kBytes))];
        }
        break;
    }
  }
  if (s->size() > max_len) s->resize(max_len);
}

int Usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s FILE...              run each input once\n"
               "       %s [-mutations=N] [-seed=S] [-max_len=L] [-artifact_prefix=P] DIR...\n"
               "           run every file in the folders, then N mutations of them\n",
               argv0, argv0);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  g_argv0 = argv[0];
  uint64_t mutations = 1000, seed = 1;
  size_t max_len = 0;
  std::vector<std::string> paths;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.size() > 1 && arg[0] == '-') {
      size_t name_at = arg.find_first_not_of('-');
      std::string flag = name_at == std::string::npos ? "" : arg.substr(name_at);
      size_t eq = flag.find('=');
      std::string key = flag.substr(0, eq);
      std::string value = eq == std::string::npos ? "" : flag.substr(eq + 1);
      if (key == "help" || key == "h") return Usage(argv[0]);
      if (eq == std::string::npos) {
        std::fprintf(stderr, "%s: flags are -name=value, got %s\n", argv[0], arg.c_str());
        return Usage(argv[0]);
      }
      if (key == "mutations") {
        mutations = std::strtoull(value.c_str(), nullptr, 10);
      } else if (key == "seed") {
        seed = std::strtoull(value.c_str(), nullptr, 10);
      } else if (key == "max_len") {
        max_len = std::strtoull(value.c_str(), nullptr, 10);
      } else if (key == "artifact_prefix") {
        g_artifact_prefix = value;
      } else {
        std::fprintf(stderr, "%s: ignoring %s (a libFuzzer flag?)\n", argv[0], arg.c_str());
      }
      continue;
    }
    paths.push_back(arg);
  }
  if (paths.empty()) return Usage(argv[0]);
  InstallCrashHandlers();

  // Files name inputs to replay; folders are corpora.
  std::vector<std::string> files;
  bool any_dir = false;
  for (const std::string& p : paths) {
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      any_dir = true;
      std::vector<std::string> in_dir;
      for (const auto& entry : fs::directory_iterator(p, ec)) {
        if (entry.is_regular_file(ec)) in_dir.push_back(entry.path().string());
      }
      std::sort(in_dir.begin(), in_dir.end());  // the same order on every machine
      files.insert(files.end(), in_dir.begin(), in_dir.end());
    } else if (fs::exists(p, ec)) {
      files.push_back(p);
    } else {
      std::fprintf(stderr, "%s: no such file or folder: %s\n", argv[0], p.c_str());
      return 2;
    }
  }

  auto start = std::chrono::steady_clock::now();
  std::vector<std::string> corpus;
  size_t largest = 0;
  for (const std::string& f : files) {
    std::string input;
    if (!ReadFile(f, &input)) {
      std::fprintf(stderr, "%s: cannot read %s\n", argv[0], f.c_str());
      return 2;
    }
    if (!any_dir) std::fprintf(stderr, "running %s (%zu bytes)\n", f.c_str(), input.size());
    RunOne(input);
    largest = std::max(largest, input.size());
    corpus.push_back(std::move(input));
  }
  if (!any_dir) {
    std::fprintf(stderr, "%zu input(s) ran without a crash\n", files.size());
    return 0;
  }
  if (corpus.empty()) corpus.emplace_back();
  if (max_len == 0) max_len = std::max<size_t>(4096, largest);

  Rng rng(seed);
  std::string input;
  for (uint64_t i = 0; i < mutations; ++i) {
    input = corpus[rng.Below(corpus.size())];
    Mutate(rng, corpus, max_len, &input);
    RunOne(input);
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "%s: %zu corpus inputs and %llu mutations (seed %llu) ran in %.2f s\n",
               argv[0], files.size(), static_cast<unsigned long long>(mutations),
               static_cast<unsigned long long>(seed), seconds);
  return 0;
}
