// The published tables as the control surface shows them (`get tables|services|backends|
// routes|maglev`), one page at a time: a page reads what the compiler counted (each
// backend's Maglev slots, each service's frontends) and never scans the tables, so a page
// of a 100,000-service snapshot costs what a page of a small one does.
#pragma once

#include <cstddef>
#include <string>

#include <nlohmann/json.hpp>

#include "control/snapshot.h"

namespace meshlane {

inline constexpr size_t kMaxPageRows = 1000;

// Paging arguments of a request: offset >= 0 (default 0), 1 <= limit <= kMaxPageRows
// (default 100). Returns an error reply, or null when both are good.
nlohmann::json read_paging(const nlohmann::json& request, size_t& offset, size_t& limit);

// A frontend as the views show it: "80/tcp", "80/tcp->8080".
std::string frontend_text(const table_frontend& f);

// `get tables`: the tables' sizes and content digest.
nlohmann::json tables_summary(const snapshot& tables);

// One page of `what`: services (external services after the internal ones), maglev,
// backends (service by service) or routes; {"ok","rows","total","offset","limit","generation"}.
nlohmann::json table_page(const snapshot& tables, const std::string& what, size_t offset, size_t limit);

}  // namespace meshlane
