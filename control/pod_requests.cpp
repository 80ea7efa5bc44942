// The control module's `pod` command: pods that come and go while the agent runs (the
// CNI plugin's ADD, DEL and CHECK). A pod add allocates the pod's addresses in the pod
// registry, then publishes the pod as a delta of the working state (state_delta.h: checked
// and compiled at the pod's cost, every service's compiled tables shared), so the eBPF
// maps and the DPDK workers (a port hot-plugged for its interface) follow in one snapshot;
// a publish that fails takes the pod back out, so nothing is left half-added. Re-publishing
// the whole document per pod, as before, cost a full apply: seconds at 100,000 services,
// on a node whose pods start and stop many times a minute.
#include "control/control_requests.h"
#include "control/dataplane_config.h"

namespace meshlane {

using json = nlohmann::json;

namespace {

// The first host address of a range: the pods' gateway.
ip_address gateway_of(const ip_prefix& range) {
  ip_address gateway = range.base;
  gateway.bytes[15] = static_cast<uint8_t>(gateway.bytes[15] | 1);
  return gateway;
}

std::optional<std::string> string_member(const json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

}  // namespace

json control_module::pod_json(const live_pod& pod, const std::optional<table_publisher::pod_context>& context) {
  json out = pod.to_json();
  if (context) {
    out["gateway"] = gateway_of(context->node.pod_cidr).to_string();
    if (context->node.pod_cidr6) out["gateway6"] = gateway_of(*context->node.pod_cidr6).to_string();
    // The overlay's 58 bytes (Geneve over IPv4, RFC 8926, with meshlane's 8-byte identity
    // option, dataplane/packet_headers.h) come off the underlay MTU, and
    // ESP's 45 at most (dataplane/esp/esp.h kEspMaxOverhead: UDP 8, SPI and sequence 8,
    // IV 8, padding 3, trailer 2, ICV 16) when any route may be encrypted: a pod's MTU
    // cannot depend on which node it talks to.
    const uint32_t esp = context->encryption != encryption_mode::off ? 45 : 0;
    out["mtu"] = context->uplink_mtu - 58 - esp;
    // What the pod's veth offloads (meshlane-cni sets it): on an af_packet port, TX
    // checksums and segmentation, GSO packets up to gso_max_size bytes, which the port's
    // RX ring frames hold; on af_xdp and memif ports nothing (they forward frames as the
    // veth gives them, so the pod finishes its own checksums).
    out["offloads"] = context->pod_offloads ? json{{"tx", true}, {"gso_max_size", kPodGsoMaxSize}}
                                            : json{{"tx", false}};
  }
  return out;
}

json control_module::pod_request_reply(const json& request) {
  pod_registry* pods = apply_.pods();
  if (!pods) return error_reply(control_error::kUnavailable, "this agent keeps no live pods (it runs without --state-dir)");
  const std::string action = request.value("action", "");
  if (action == "add") return pod_add(request);
  if (action == "list") {
    json rows = json::array();
    const auto context = publisher_.current_pod_context();
    for (const live_pod& pod : pods->pods()) rows.push_back(pod_json(pod, context));
    return {{"ok", true}, {"pods", rows}};
  }
  if (action != "delete" && action != "get")
    return error_reply(control_error::kInvalidRequest, "pod needs \"action\": add, delete, get or list");
  const auto container_id = string_member(request, "container_id");
  if (!container_id || container_id->empty())
    return error_reply(control_error::kInvalidRequest, "pod " + action + " needs a string \"container_id\"");
  if (action == "delete") return pod_delete(*container_id);
  const auto pod = pods->find(*container_id);
  if (!pod) return error_reply("not_found", "no live pod has container id " + *container_id);
  return {{"ok", true}, {"pod", pod_json(*pod, publisher_.current_pod_context())}};
}

json control_module::pod_add(const json& request) {
  auto it = request.find("pod");
  if (it == request.end() || !it->is_object())
    return error_reply(control_error::kInvalidRequest, "pod add needs a \"pod\" object");
  const json& in = *it;
  pod_request wanted;
  wanted.container_id = in.value("container_id", "");
  wanted.name = in.value("name", "");
  wanted.pod_namespace = in.value("namespace", "default");
  wanted.host_interface = in.value("host_interface", "");
  wanted.netns = in.value("netns", "");
  wanted.interface = in.value("interface", "");
  wanted.cgroup = in.value("cgroup", "");
  if (in.contains("labels")) {
    if (!in["labels"].is_object()) return error_reply(control_error::kInvalidRequest, "pod.labels must be an object of strings");
    for (const auto& [key, value] : in["labels"].items()) {
      if (!value.is_string()) return error_reply(control_error::kInvalidRequest, "pod.labels." + key + " must be a string");
      wanted.labels[key] = value.get<std::string>();
    }
  }
  if (std::string problem = validate_pod_request(wanted); !problem.empty())
    return error_reply(control_error::kInvalidRequest, problem);

  pod_registry* pods = apply_.pods();
  auto apply_lock = apply_.hold();
  const auto context = publisher_.current_pod_context();
  if (auto existing = pods->find(wanted.container_id)) return {{"ok", true}, {"pod", pod_json(*existing, context)}};
  if (!context) return error_reply(control_error::kUnavailable, "no document has been published yet");
  std::string error;
  const auto pod = pods->add(wanted, context->node, context->taken, error);
  if (!pod) return error_reply(control_error::kUnavailable, error);
  const publish_result result = apply_.publish_pod_change_locked(*pod, true);
  if (!result.errors.empty()) {
    std::string undo_error;
    pods->remove(pod->container_id, undo_error);
    std::string message = "pod " + pod->name + " was not added: " + result.errors.front().to_string();
    if (!undo_error.empty()) message += "; and taking it back out failed: " + undo_error;
    json reply = error_reply(control_error::kPublishFailed, message);
    json errors = json::array();
    for (const auto& e : result.errors) errors.push_back({{"path", e.path}, {"message", e.message}});
    reply["errors"] = errors;
    return reply;
  }
  return {{"ok", true}, {"pod", pod_json(*pod, context)}, {"generation", result.generation}};
}

json control_module::pod_delete(const std::string& container_id) {
  pod_registry* pods = apply_.pods();
  auto apply_lock = apply_.hold();
  const auto pod = pods->find(container_id);
  if (!pod) return {{"ok", true}, {"deleted", false}};  // a DEL for what never was, or again
  std::string error;
  if (!pods->remove(container_id, error)) return error_reply(control_error::kInternal, error);
  if (!publisher_.current()) return {{"ok", true}, {"deleted", true}};
  publish_result result = apply_.publish_pod_change_locked(*pod, false);
  if (!result.errors.empty() && !result.refused_by_sink) {
    // The working state did not hold the pod as the registry did (or its removal broke a
    // cross-check): publish the kept document with the remaining live pods, whole, as
    // every publish did before pods were deltas. (A sink's refusal would only repeat.)
    const std::string document = apply_.kept_document_text_locked();
    if (!document.empty()) result = apply_.publish_document_locked(document, "pod delete " + pod->name + " (whole document)");
  }
  if (!result.errors.empty()) {
    // The pod is gone from the registry (its address is free again); the running tables
    // still name it until the next publish succeeds.
    log_.write(log_level::error, "pod " + pod->name + " deleted, but publishing without it failed: " +
                                     result.errors.front().to_string());
    return error_reply(control_error::kPublishFailed, "pod " + pod->name + " was removed from the registry but the "
                       "tables could not be published without it: " + result.errors.front().to_string());
  }
  return {{"ok", true}, {"deleted", true}, {"generation", result.generation}};
}

}  // namespace meshlane
