// A valid two-node document used as the starting point of control tests: each test
// changes one thing and checks what that does.
#pragma once

#include <nlohmann/json.hpp>

namespace meshlane::testing {

inline nlohmann::json sample_document() {
  return nlohmann::json::parse(R"({
    "version": 1,
    "node": {"name": "node1", "underlay_ip": "198.19.0.1", "pod_cidr": "198.18.1.0/24",
             "pod_cidr6": "fd00:6d6c:1::/64", "pod_cgroup": "/sys/fs/cgroup/unified/meshlane-test"},
    "nodes": [
      {"name": "node2", "underlay_ip": "198.19.0.2", "pod_cidr": "198.18.2.0/24"}
    ],
    "pods": [
      {"name": "web-1", "ip": "198.18.1.10", "ip6": "fd00:6d6c:1::10", "interface": "mlp-web1",
       "labels": {"app": "web"}},
      {"name": "client", "ip": "198.18.1.20", "interface": "mlp-client", "labels": {"app": "client"}}
    ],
    "services": [
      {"name": "web", "vip": "198.19.128.10",
       "ports": [{"name": "http", "port": 80, "protocol": "tcp", "target_port": 8080}],
       "backends": [
         {"ip": "198.18.1.10", "port": 8080, "weight": 1, "node": "node1"},
         {"ip": "198.18.2.10", "port": 8080, "weight": 3, "node": "node2"}
       ]},
      {"name": "dns", "vip": "198.19.128.53", "session_affinity": true,
       "ports": [{"port": 53, "protocol": "udp"}],
       "backends": [{"ip": "198.18.2.53", "port": 5353, "node": "node2"}]}
    ],
    "tunables": {"burst_size": 32, "workers": 1, "idle_policy": "adaptive", "maglev_table_size": 65537}
  })");
}

}  // namespace meshlane::testing
