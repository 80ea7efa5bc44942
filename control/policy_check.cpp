#include "control/policy_check.h"

#include "control/control_requests.h"
#include "control/policy_evaluator.h"
#include "control/workload_identity.h"

namespace meshlane {

using json = nlohmann::json;

namespace {

const pod_spec* pod_named(const desired_state& state, const std::string& name) {
  for (const auto& pod : state.pods)
    if (pod.name == name) return &pod;
  return nullptr;
}

json source_json(uint32_t identity, const identity_catalog& catalog, const ip_address& ip,
                 const std::string& pod) {
  json out = {{"ip", ip.to_string()}, {"identity", identity}};
  if (!pod.empty()) out["pod"] = pod;
  if (is_reserved_identity(identity))
    out["principal"] = nullptr, out["identity_name"] = reserved_identity_name(identity);
  else if (const auto* w = catalog.find(identity))
    out["principal"] = w->principal;
  return out;
}

// One destination pod's verdict, with the reference evaluator's beside it.
json judge(const snapshot& tables, const std::vector<policy_spec>& canonical,
           const identity_catalog& catalog, const pod_spec& to, const table_pod& compiled,
           uint32_t identity, const ip_address& from_ip, uint16_t port) {
  const policy_verdict v = tables.policy.decide(compiled.policy_class, identity, from_ip, port);
  const policy_decision reference = evaluate_policies(canonical, to.pod_namespace, to.labels,
                                                      source_of(catalog, identity, from_ip), port);
  json out = {{"pod", to.name},
              {"ip", to.ip.to_string()},
              {"port", port},
              {"principal", catalog.find(compiled.identity)
                                ? json(catalog.find(compiled.identity)->principal)
                                : json(nullptr)},
              {"verdict", v.allowed ? "allow" : "deny"},
              {"reason", to_string(v.reason)},
              {"policy", v.policy == kNoPolicyIndex ? json(nullptr)
                                                    : json(tables.policy.policy_names[v.policy])},
              {"rule", v.rule == kNoRuleIndex ? json(nullptr) : json(v.rule)},
              {"policy_class", compiled.policy_class}};
  const int reference_policy = reference.policy;
  const bool agrees =
      reference.reason == v.reason &&
      reference.rule == (v.rule == kNoRuleIndex ? -1 : int{v.rule}) &&
      reference_policy == (v.policy == kNoPolicyIndex ? -1 : static_cast<int>(v.policy));
  if (!agrees)
    out["evaluator_disagrees"] = {{"reason", to_string(reference.reason)},
                                  {"policy", reference.policy},
                                  {"rule", reference.rule}};
  return out;
}

}  // namespace

json policy_check(const snapshot& tables, const desired_state& state, const json& request) {
  auto text = [&](const char* key) {
    return request.contains(key) && request[key].is_string() ? request[key].get<std::string>() : "";
  };
  const std::string from = text("from"), to = text("to"),
                    proto = request.contains("proto") ? text("proto") : "tcp";
  if (from.empty() || to.empty() || !request.contains("port") ||
      !request["port"].is_number_unsigned() || request["port"].get<uint64_t>() < 1 ||
      request["port"].get<uint64_t>() > 65535)
    return error_reply(
        control_error::kInvalidRequest,
        "policy check needs \"from\" (a pod or an address), \"to\" (a pod or a service VIP) and "
        "\"port\" (1..65535)");
  if (proto != "tcp" && proto != "udp")
    return error_reply(control_error::kInvalidRequest,
                       "\"proto\" is tcp or udp, got '" + proto + "'");
  const uint16_t port = static_cast<uint16_t>(request["port"].get<uint64_t>());
  const identity_catalog catalog = identity_catalog::of(state);
  const std::vector<policy_spec> canonical = in_canonical_order(state.policies);

  uint32_t identity = kIdentityNone;
  std::optional<ip_address> from_ip;
  std::string from_pod;
  if (const pod_spec* pod = pod_named(state, from)) {
    identity = identity_number(
        spiffe_principal(state.trust_domain, pod->pod_namespace, pod->service_account));
    from_ip = pod->ip;
    from_pod = pod->name;
  } else if (auto address = ip_address::parse(from)) {
    from_ip = *address;
    // An address of a local pod is that pod; any other carries no identity.
    if (const table_pod* p = tables.find_pod(*address)) identity = p->identity, from_pod = p->name;
  } else {
    return error_reply(control_error::kInvalidRequest,
                       "no pod named '" + from +
                           "' on this node, and it is no address; pods: `meshctl get config`");
  }

  json reply = {{"ok", true},
                {"generation", tables.generation},
                {"proto", proto},
                {"source", source_json(identity, catalog, *from_ip, from_pod)}};
  json destinations = json::array();
  auto add_pod = [&](const pod_spec& pod, uint16_t pod_port) {
    const table_pod* compiled = tables.find_pod(pod.ip);
    if (!compiled) return;
    destinations.push_back(
        judge(tables, canonical, catalog, pod, *compiled, identity, *from_ip, pod_port));
  };
  if (const pod_spec* pod = pod_named(state, to)) {
    add_pod(*pod, port);
  } else if (auto address = ip_address::parse(to)) {
    if (const table_frontend* f = tables.find_frontend(
            *address, port, proto == "udp" ? l4_protocol::udp : l4_protocol::tcp)) {
      const table_service& svc = tables.services[f->service_index];
      reply["service"] = svc.name;
      for (uint32_t b = 0; b < svc.backend_count; ++b) {
        const table_backend& be = svc.compiled->backends[b];
        const uint16_t backend_port = f->target_port ? f->target_port : be.port;
        const table_pod* local =
            be.node_index == kLocalNodeIndex ? tables.find_pod(be.ip) : nullptr;
        const pod_spec* spec = local ? pod_named(state, local->name) : nullptr;
        if (spec) {
          add_pod(*spec, backend_port);
        } else {
          destinations.push_back(
              {{"ip", be.ip.to_string()},
               {"port", backend_port},
               {"node", tables.nodes.at(be.node_index).name},
               {"verdict", "remote"},
               {"reason", "decided by the agent of node " + tables.nodes.at(be.node_index).name +
                              " (policy is enforced at the destination's node)"}});
        }
      }
    } else if (const table_pod* p = tables.find_pod(*address); p && pod_named(state, p->name)) {
      add_pod(*pod_named(state, p->name), port);
    } else {
      return error_reply(control_error::kInvalidRequest,
                         "'" + to + "' is neither a pod of this node nor a service VIP on " +
                             std::to_string(port) + "/" + proto);
    }
  } else {
    return error_reply(control_error::kInvalidRequest,
                       "no pod named '" + to + "' on this node, and it is no address");
  }
  reply["destinations"] = destinations;
  // The flow's verdict: denied when any judged destination denies (a VIP may pick it).
  bool any_deny = false, any_allow = false;
  for (const auto& d : destinations)
    any_deny |= d["verdict"] == "deny", any_allow |= d["verdict"] == "allow";
  reply["verdict"] =
      any_deny ? (any_allow ? "deny for some backends" : "deny") : (any_allow ? "allow" : "remote");
  if (destinations.size() == 1)
    for (const char* key : {"reason", "policy", "rule"})
      if (destinations[0].contains(key)) reply[key] = destinations[0][key];
  return reply;
}

}  // namespace meshlane
