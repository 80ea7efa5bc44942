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

// The services view a /status.json query asks for: offset=N&limit=N&search=TEXT.
status_page_view status_view_from_query(std::string_view query);

// Installs the routes on `server` (before server.start()).
void add_agent_routes(http_server& server, control_module& control);

}  // namespace meshlane
