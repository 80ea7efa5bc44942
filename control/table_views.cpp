#include "control/table_views.h"

#include "control/control_errors.h"

namespace meshlane {

using nlohmann::json;

json read_paging(const json& request, size_t& offset, size_t& limit) {
  offset = 0;
  limit = 100;
  if (request.contains("offset")) {
    const json& v = request["offset"];
    if (!v.is_number_unsigned()) return error_reply(control_error::kInvalidRequest, "offset must be a non-negative integer");
    offset = v.get<size_t>();
  }
  if (request.contains("limit")) {
    const json& v = request["limit"];
    if (!v.is_number_unsigned() || v.get<uint64_t>() == 0 || v.get<uint64_t>() > kMaxPageRows)
      return error_reply(control_error::kInvalidRequest,
                         "limit must be an integer 1.." + std::to_string(kMaxPageRows));
    limit = v.get<size_t>();
  }
  return nullptr;
}

std::string frontend_text(const table_frontend& f) {
  std::string text = std::to_string(f.port) + "/" + to_string(f.protocol);
  if (f.target_port) text += "->" + std::to_string(f.target_port);
  return text;
}

json tables_summary(const snapshot& t) {
  return {{"ok", true}, {"generation", t.generation}, {"content_digest", t.content_digest()},
          {"services", t.services.size()}, {"backends", t.backend_total},
          {"frontends", t.frontends.size()}, {"routes", t.routes.size()},
          {"pods", t.pods.size()}, {"nodes", t.nodes.size()},
          {"maglev_table_size", t.tuning.maglev_table_size}};
}

json table_page(const snapshot& t, const std::string& what, size_t offset, size_t limit) {
  // Only the page is built: views read what the compiler counted (each backend's Maglev
  // slots, each service's frontends), never scan the tables, so a page of a 100k-service
  // snapshot costs what a page of a small one does.
  json rows = json::array();
  size_t total = 0;
  const double m = t.tuning.maglev_table_size;
  auto ports_of = [&](const table_service& svc) {
    json ports = json::array();
    for (uint32_t i = 0; i < svc.frontend_count; ++i)
      ports.push_back(frontend_text(t.frontends[t.service_frontends[svc.first_frontend + i]]));
    return ports;
  };
  if (what == "services" || what == "maglev") {
    total = t.services.size();
    // Issue 18: external services follow the internal ones in `services`, their
    // destinations in the vip column.
    const size_t internal = total;
    if (what == "services") total += t.external_services.size();
    for (size_t s = offset; s < total && rows.size() < limit; ++s) {
      if (s >= internal) {
        const external_service_spec& external = t.external_services[s - internal];
        std::string destinations;
        for (const ip_prefix& d : external.destinations) destinations += (destinations.empty() ? "" : ",") + d.to_string();
        json ports = json::array();
        for (uint16_t port : external.ports)
          ports.push_back(std::to_string(port) + (external.protocol == egress_protocol::tcp ? "/tcp" : "/udp"));
        // With a VIP: the VIP in the vip column, its addresses the backends the eBPF load
        // balancer picks from; the destinations stay in their own column.
        json row = {{"name", external.name},
                    {"vip", external.vip ? external.vip->to_string() : destinations},
                    {"ports", ports},
                    {"backends", external.vip_backends().size()},
                    {"session_affinity", false},
                    {"kind", "external"}};
        if (external.vip) row["destinations"] = destinations;
        rows.push_back(std::move(row));
        continue;
      }
      const auto& svc = t.services[s];
      if (what == "services") {
        rows.push_back({{"name", svc.name}, {"vip", svc.vip.to_string()}, {"ports", ports_of(svc)},
                        {"backends", svc.backend_count}, {"session_affinity", svc.session_affinity},
                        {"kind", "internal"}});
        continue;
      }
      json shares = json::array();
      for (uint32_t b = 0; b < svc.backend_count; ++b) {
        const auto& be = svc.compiled->backends[b];
        shares.push_back({{"backend", be.ip.to_string() + ":" + std::to_string(be.port)}, {"weight", be.weight},
                          {"slots", be.maglev_slots}, {"share", be.maglev_slots / m}});
      }
      rows.push_back({{"service", svc.name}, {"table_size", t.tuning.maglev_table_size}, {"backends", shares}});
    }
  } else if (what == "backends") {
    // Backends are listed service by service: the page starts at index `offset`.
    total = t.backend_total;
    size_t service = 0, first = 0;  // the service of backend `b`, and its first backend's index
    for (size_t b = offset; b < total && rows.size() < limit; ++b) {
      while (first + t.services[service].backend_count <= b) first += t.services[service++].backend_count;
      const auto& svc = t.services[service];
      const auto& be = svc.compiled->backends[b - first];
      rows.push_back({{"service", svc.name}, {"ip", be.ip.to_string()}, {"port", be.port},
                      {"weight", be.weight}, {"node", t.nodes.at(be.node_index).name},
                      {"maglev_share", be.maglev_slots / m}});
    }
  } else {  // routes
    total = t.routes.size();
    for (size_t i = offset; i < total && rows.size() < limit; ++i) {
      const auto& r = t.routes[i];
      rows.push_back({{"prefix", r.prefix.to_string()}, {"node", t.nodes.at(r.node_index).name},
                      {"underlay_ip", t.nodes.at(r.node_index).underlay_ip.to_string()},
                      {"local", r.node_index == kLocalNodeIndex}});
    }
  }
  return {{"ok", true}, {"rows", rows}, {"total", total}, {"offset", offset}, {"limit", limit},
          {"generation", t.generation}};
}


}  // namespace meshlane
