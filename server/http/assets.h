// The dashboard's files (server/http/dashboard/ and Debian's libjs-chart.js), compiled
// into coldfused by server/http/embed_assets.cmake so the binary needs nothing at run
// time. Stateless; thread-safe.
#ifndef COLDFUSE_SERVER_HTTP_ASSETS_H_
#define COLDFUSE_SERVER_HTTP_ASSETS_H_

#include <cstddef>

#include "absl/strings/string_view.h"

namespace coldfuse::http {

struct Asset {
  const char* path;  // e.g. "/index.html"
  const char* content_type;
  const char* data;
  size_t size;
};

// The asset served at `path`, or null.
const Asset* FindAsset(absl::string_view path);

}  // namespace coldfuse::http

#endif  // COLDFUSE_SERVER_HTTP_ASSETS_H_
