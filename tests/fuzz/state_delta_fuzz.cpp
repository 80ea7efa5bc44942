// libFuzzer target: the delta reader (state_delta.h) and the publisher's delta path behind
// it, against a small valid document. Properties besides "no crash, no sanitizer report":
// a result has a delta exactly when it has no errors, every error names a path, a refused
// delta leaves the published tables as they were, and an accepted one publishes tables equal
// to a full compile of the publisher's resulting state.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

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
  return 0;
}
