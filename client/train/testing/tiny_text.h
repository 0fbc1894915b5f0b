// Test support: a tiny BERT text model folder (the committed random fixture's config.json
// and weights, plus a 100-token WordPiece vocabulary) and labelled text files whose labels
// follow from which words a text uses, so a few steps of fine-tuning can learn them.
// Torch-free. Stateless functions; thread-safe.
#ifndef COLDFUSE_CLIENT_TRAIN_TESTING_TINY_TEXT_H_
#define COLDFUSE_CLIENT_TRAIN_TESTING_TINY_TEXT_H_

#include <cstdint>
#include <string>

namespace coldfuse::train::testing {

// Writes `dir`/config.json (from `fixture_dir`/config.json, with every dropout set to
// `dropout`), `dir`/vocab.txt and, when `with_weights`, a copy of the fixture's
// model.safetensors. Returns the path of the checkpoint's safetensors (in `fixture_dir`
// when not copied). Aborts the test process on I/O failure.
std::string WriteTinyTextModel(const std::string& fixture_dir, const std::string& dir,
                               double dropout = 0.1, bool with_weights = false);

// Writes a CSV with columns text,label: each text mixes neutral words with one to three
// "upbeat" or "downbeat" words, labelled "pos" or "neg"; with `regression`, texts mix both
// moods and the label is the upbeat share of the mood words. Seeded.
void WriteTinyTextCsv(const std::string& path, int rows, uint64_t seed, bool regression = false);

}  // namespace coldfuse::train::testing

#endif  // COLDFUSE_CLIENT_TRAIN_TESTING_TINY_TEXT_H_
