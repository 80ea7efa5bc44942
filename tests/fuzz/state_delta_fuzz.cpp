// libFuzzer target: the delta reader (state_delta.h) and the publisher's delta path behind
// it, against a small valid document. Properties besides "no crash, no sanitizer report":
// a result has a delta exactly when it has no errors, every error names a path, a refused
// delta leaves the published tables as they were, and an accepted one publishes tables equal
// to a full compile of the publisher's resulting state. And against the full path: the
// document patched by an accepted delta (as the agent keeps it for `get config` and
// re-publishes) passes full validation and compiles to the same tables; a delta whose
// patched document full validation refuses is never accepted. (The converse need not hold:
// a delta that removes a name the state lacks is refused, while the patched document is
// the unchanged, valid one.)
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include <nlohmann/json.hpp>

#include "control/published_document.h"
#include "control/state_delta.h"
#include "control/table_compiler.h"
#include "control/table_publisher.h"

namespace {
constexpr std::string_view kDocument = R"({
  "node": {"name": "node1", "underlay_ip": "198.19.0.1", "pod_cidr": "198.18.1.0/24"},
  "nodes": [{"name": "node2", "underlay_ip": "198.19.0.2", "pod_cidr": "198.18.2.0/24"}],
  "pods": [{"name": "web-1", "ip": "198.18.1.10", "interface": "mlp-web1"}],
  "services": [{"name": "web", "vip": "198.19.128.10", "ports": [{"port": 80}],
                "backends": [{"ip": "198.18.1.10", "port": 8080, "node": "node1"},
                             {"ip": "198.18.2.10", "port": 8080, "node": "node2"}]}],
  "tunables": {"maglev_table_size": 251}
})";
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace meshlane;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const delta_parse_result parsed = parse_state_delta(text);
  if (parsed.delta.has_value() == !parsed.errors.empty()) std::abort();
  for (const auto& e : parsed.errors)
    if (e.path.empty() || e.path[0] != '$' || e.message.empty()) std::abort();
  if (!parsed.delta) return 0;

  table_publisher publisher;
  if (!publisher.apply(kDocument).errors.empty()) std::abort();
  const auto before = publisher.current();
  const std::string before_digest = before->content_digest();
  const publish_result result = publisher.apply_delta(*parsed.delta);
  for (const auto& e : result.errors)
    if (e.path.empty() || e.path[0] != '$' || e.message.empty()) std::abort();
  if (before->content_digest() != before_digest) std::abort();
  if (!result.errors.empty()) {
    if (publisher.current() != before) std::abort();
    return 0;
  }
  const auto state = publisher.current_state();
  if (compile_tables(*state, 1)->content_digest() != publisher.current()->content_digest()) std::abort();

  // As the agent takes a delta: parsed as JSON with the request, its text read again, and
  // the kept document patched with the JSON once the publisher accepted it.
  const nlohmann::json delta_json = nlohmann::json::parse(text, nullptr, false);
  if (delta_json.is_discarded()) return 0;
  table_publisher by_delta;
  if (!by_delta.apply(kDocument).errors.empty()) std::abort();
  if (!by_delta.apply_delta(delta_json.dump()).errors.empty()) return 0;
  published_document kept;
  kept.replace(nlohmann::json::parse(kDocument));
  kept.patch(delta_json);
  table_publisher full;
  if (!full.apply(kept.content().dump()).errors.empty()) std::abort();  // accepted by the delta path only
  if (full.current()->content_digest() != by_delta.current()->content_digest()) std::abort();
  return 0;
}
