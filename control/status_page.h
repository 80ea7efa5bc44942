// The agent's HTTP surface: /metrics (Prometheus text 0.0.4), /healthz, /readyz, the
// status page at / and the JSON it refreshes from (/status.json). Everything comes from
// the control module, hence from the registry and the publisher.
#pragma once

#include <string>

#include "control/control_requests.h"
#include "control/http_server.h"

namespace meshlane {

// The page itself: static HTML that fetches /status.json every second and updates in place.
const std::string& status_page_html();

// Installs the routes on `server` (before server.start()).
void add_agent_routes(http_server& server, control_module& control);

}  // namespace meshlane
