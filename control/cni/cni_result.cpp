#include "control/cni/cni_result.h"

#include "control/cni/cni_config.h"

namespace meshlane::cni {

using nlohmann::json;

json add_result(const std::string& cni_version, const result_interface& host_end,
                const result_interface& container_end, const pod_network& network,
                const json& dns) {
  const bool ips_carry_version = cni_version != "1.0.0";
  constexpr int kContainerIndex = 1;
  json result = {{"cniVersion", cni_version},
                 {"interfaces", json::array()},
                 {"ips", json::array()},
                 {"routes", json::array()}};
  result["interfaces"].push_back({{"name", host_end.name}, {"mac", host_end.mac}});
  result["interfaces"].push_back({{"name", container_end.name},
                                  {"mac", container_end.mac},
                                  {"sandbox", container_end.sandbox}});

  auto add_family = [&](const char* version, const std::string& ip, const std::string& gateway,
                        const char* host_prefix, const char* default_route) {
    json entry = {
        {"address", ip + host_prefix}, {"gateway", gateway}, {"interface", kContainerIndex}};
    if (ips_carry_version) entry["version"] = version;
    result["ips"].push_back(entry);
    // The gateway is on-link (a scope-link host route), everything else goes through it.
    result["routes"].push_back({{"dst", gateway + host_prefix}});
    result["routes"].push_back({{"dst", default_route}, {"gw", gateway}});
  };
  add_family("4", network.ip, network.gateway, "/32", "0.0.0.0/0");
  if (network.has_ipv6()) add_family("6", network.ip6, network.gateway6, "/128", "::/0");
  if (dns.is_object()) result["dns"] = dns;
  return result;
}

json error_result(const std::string& cni_version, const cni_error& error) {
  json result = {{"cniVersion", cni_version}, {"code", error.code}, {"msg", error.message}};
  if (!error.details.empty()) result["details"] = error.details;
  return result;
}

json version_result() {
  return {{"cniVersion", kNewestVersion}, {"supportedVersions", supported_versions()}};
}

std::string to_output(const json& result) {
  return result.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace meshlane::cni
