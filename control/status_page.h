// The agent's HTTP surface: /metrics (Prometheus text 0.0.4), /healthz, /readyz, the
// status page at / and the JSON it refreshes from (/status.json). Everything comes from
// the control module, hence from the registry and the publisher.
#pragma once

#include <string>
#include <string_view>

#include "control/control_requests.h"
#include "control/http_server.h"

namespace meshlane {

// The page itself: static HTML that fetches /status.json every second and updates in place.
const std::string& status_page_html();

// Which services the status page shows: a page of them, optionally filtered.
struct status_page_view {
  size_t offset = 0, limit = 50;
  std::string search;  // a substring of the name or the VIP
};

// What /status.json sends: counters, a page of services and backends with their shares
// (those whose name or VIP contains `search`), the subsystems' sections, log lines. All
// read through the control module's publisher, registry and log.
nlohmann::json status_page_model(control_module& control, const status_page_view& view = {});

// The services view a /status.json query asks for: offset=N&limit=N&search=TEXT.
status_page_view status_view_from_query(std::string_view query);

// Installs the routes on `server` (before server.start()). `heavy`: where /metrics and
// /status.json are computed (off the probes' thread; inline only for the A/B benchmark).
void add_agent_routes(http_server& server, control_module& control,
                      http_route_kind heavy = http_route_kind::off_thread);

}  // namespace meshlane
