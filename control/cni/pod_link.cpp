#include "control/cni/pod_link.h"

#include <arpa/inet.h>
#include <linux/ethtool.h>
#include <linux/if_addr.h>
#include <linux/rtnetlink.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/route/link/veth.h>
#include <netlink/route/route.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

namespace meshlane::cni {

namespace {

// libnl objects are reference counted; these hold one reference each.
struct sock_release {
  void operator()(nl_sock* s) const { nl_socket_free(s); }
};
struct link_release {
  void operator()(rtnl_link* l) const { rtnl_link_put(l); }
};
struct addr_release {
  void operator()(rtnl_addr* a) const { rtnl_addr_put(a); }
};
struct route_release {
  void operator()(rtnl_route* r) const { rtnl_route_put(r); }
};
struct nladdr_release {
  void operator()(nl_addr* a) const { nl_addr_put(a); }
};
struct cache_release {
  void operator()(nl_cache* c) const { nl_cache_free(c); }
};
using route_socket = std::unique_ptr<nl_sock, sock_release>;
using link_ref = std::unique_ptr<rtnl_link, link_release>;
using addr_ref = std::unique_ptr<rtnl_addr, addr_release>;
using route_ref = std::unique_ptr<rtnl_route, route_release>;
using nladdr_ref = std::unique_ptr<nl_addr, nladdr_release>;
using cache_ref = std::unique_ptr<nl_cache, cache_release>;

cni_error netlink_error(const std::string& what, int nl_error) {
  return make_error(cni_code::kLinkSetupFailed, what + ": " + nl_geterror(nl_error));
}

bool is_absent(int nl_error) {
  return nl_error == -NLE_OBJ_NOTFOUND || nl_error == -NLE_NODEV;
}

// A NETLINK_ROUTE socket in the calling thread's network namespace.
cni_outcome<route_socket> open_route_socket() {
  route_socket sock(nl_socket_alloc());
  if (!sock) return make_error(cni_code::kLinkSetupFailed, "cannot allocate a netlink socket");
  if (const int error = nl_connect(sock.get(), NETLINK_ROUTE); error < 0)
    return netlink_error("cannot open a route netlink socket", error);
  return sock;
}

// The link named `name`; a null link_ref (and no error) when there is none.
cni_outcome<link_ref> find_link(nl_sock* sock, const std::string& name) {
  rtnl_link* link = nullptr;
  const int error = rtnl_link_get_kernel(sock, 0, name.c_str(), &link);
  if (error == 0) return link_ref(link);
  if (is_absent(error)) return link_ref();
  return netlink_error("cannot look up link " + name, error);
}

std::string mac_of(rtnl_link* link) {
  nl_addr* address = rtnl_link_get_addr(link);
  if (!address) return "";
  const auto* bytes = static_cast<const unsigned char*>(nl_addr_get_binary_addr(address));
  std::string text;
  for (unsigned i = 0; i < nl_addr_get_len(address); ++i) {
    char octet[4];
    std::snprintf(octet, sizeof octet, i ? ":%02x" : "%02x", bytes[i]);
    text += octet;
  }
  return text;
}

std::optional<cni_error> set_link_up(nl_sock* sock, const std::string& name,
                                     std::optional<unsigned> mtu) {
  auto link = find_link(sock, name);
  if (!link.ok()) return link.error;
  if (!*link.value)
    return make_error(cni_code::kLinkSetupFailed, "link " + name + " does not exist");
  link_ref changes(rtnl_link_alloc());
  if (!changes) return make_error(cni_code::kLinkSetupFailed, "out of memory");
  if (mtu) rtnl_link_set_mtu(changes.get(), *mtu);
  rtnl_link_set_flags(changes.get(), IFF_UP);
  if (const int error = rtnl_link_change(sock, link.value->get(), changes.get(), 0); error < 0)
    return netlink_error(
        "cannot bring " + name + " up" + (mtu ? " with MTU " + std::to_string(*mtu) : ""), error);
  return std::nullopt;
}

cni_outcome<nladdr_ref> parse_address(const std::string& text, int family) {
  nl_addr* address = nullptr;
  if (const int error = nl_addr_parse(text.c_str(), family, &address); error < 0)
    return netlink_error("cannot parse address " + text, error);
  return nladdr_ref(address);
}

std::optional<cni_error> add_address(nl_sock* sock, int ifindex, const std::string& name,
                                     const std::string& prefix, int family) {
  auto local = parse_address(prefix, family);
  if (!local.ok()) return local.error;
  addr_ref address(rtnl_addr_alloc());
  if (!address) return make_error(cni_code::kLinkSetupFailed, "out of memory");
  rtnl_addr_set_ifindex(address.get(), ifindex);
  if (const int error = rtnl_addr_set_local(address.get(), local.value->get()); error < 0)
    return netlink_error("cannot use address " + prefix, error);
  // The address is the pod's alone (the agent hands it out), so duplicate address
  // detection would only delay the pod's first packets by a second or more (RFC 4862 5.4).
  if (family == AF_INET6) rtnl_addr_set_flags(address.get(), IFA_F_NODAD);
  if (const int error = rtnl_addr_add(sock, address.get(), NLM_F_CREATE | NLM_F_EXCL); error < 0)
    return netlink_error("cannot add address " + prefix + " to " + name, error);
  return std::nullopt;
}

// dst via gateway (or on-link when gateway is empty) through ifindex.
std::optional<cni_error> add_route(nl_sock* sock, int ifindex, int family,
                                   const std::string& destination, const std::string& gateway) {
  auto dst = parse_address(destination, family);
  if (!dst.ok()) return dst.error;
  route_ref route(rtnl_route_alloc());
  if (!route) return make_error(cni_code::kLinkSetupFailed, "out of memory");
  rtnl_route_set_family(route.get(), static_cast<uint8_t>(family));
  rtnl_route_set_table(route.get(), RT_TABLE_MAIN);
  rtnl_route_set_protocol(route.get(), RTPROT_BOOT);
  rtnl_route_set_scope(route.get(), gateway.empty() ? RT_SCOPE_LINK : RT_SCOPE_UNIVERSE);
  if (const int error = rtnl_route_set_dst(route.get(), dst.value->get()); error < 0)
    return netlink_error("cannot use route destination " + destination, error);
  rtnl_nexthop* hop = rtnl_route_nh_alloc();
  if (!hop) return make_error(cni_code::kLinkSetupFailed, "out of memory");
  rtnl_route_nh_set_ifindex(hop, ifindex);
  if (!gateway.empty()) {
    auto via = parse_address(gateway, family);
    if (!via.ok()) {
      rtnl_route_nh_free(hop);
      return via.error;
    }
    rtnl_route_nh_set_gateway(hop, via.value->get());
  }
  rtnl_route_add_nexthop(route.get(), hop);  // the route owns the hop from here
  if (const int error = rtnl_route_add(sock, route.get(), NLM_F_CREATE | NLM_F_EXCL); error < 0)
    return netlink_error(
        "cannot add route " + destination + (gateway.empty() ? "" : " via " + gateway), error);
  return std::nullopt;
}

// ETHTOOL_[GS]TXCSUM through the legacy ioctl, on a socket of the calling thread's namespace.
cni_outcome<bool> ethtool_tx_checksum(const std::string& name, std::optional<bool> set_to) {
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return make_error(cni_code::kLinkSetupFailed, std::string("socket: ") + std::strerror(errno));
  ethtool_value value{};
  value.cmd = set_to ? ETHTOOL_STXCSUM : ETHTOOL_GTXCSUM;
  value.data = set_to && *set_to ? 1 : 0;
  ifreq request{};
  std::snprintf(request.ifr_name, sizeof request.ifr_name, "%s", name.c_str());
  request.ifr_data = reinterpret_cast<char*>(&value);
  const int result = ::ioctl(fd, SIOCETHTOOL, &request);
  const int error = errno;
  ::close(fd);
  if (result != 0)
    return make_error(cni_code::kLinkSetupFailed,
                      std::string("cannot ") + (set_to ? "set" : "read") +
                          " TX checksum offload of " + name + ": " + std::strerror(error));
  return set_to ? *set_to : value.data != 0;
}

// IFLA_GSO_MAX_SIZE of an existing link (RTM_SETLINK; libnl-route 3.7 reads it but has
// no setter): the largest GSO packet the pod's stack hands the veth.
std::optional<cni_error> set_gso_max_size(nl_sock* sock, int ifindex, const std::string& name, uint32_t size) {
  nl_msg* message = nlmsg_alloc_simple(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK);
  if (!message) return make_error(cni_code::kLinkSetupFailed, "out of memory for a netlink message");
  ifinfomsg link{};
  link.ifi_family = AF_UNSPEC;
  link.ifi_index = ifindex;
  int error = nlmsg_append(message, &link, sizeof link, NLMSG_ALIGNTO);
  if (error >= 0) error = nla_put_u32(message, IFLA_GSO_MAX_SIZE, size);
  if (error >= 0) error = nl_send_auto(sock, message);
  nlmsg_free(message);
  if (error >= 0) error = nl_wait_for_ack(sock);
  if (error < 0) return netlink_error("cannot set gso_max_size " + std::to_string(size) + " on " + name, error);
  return std::nullopt;
}

std::string prefix_text(nl_addr* address) {
  char text[INET6_ADDRSTRLEN];
  if (!inet_ntop(nl_addr_get_family(address), nl_addr_get_binary_addr(address), text, sizeof text))
    return "";
  return std::string(text) + "/" + std::to_string(nl_addr_get_prefixlen(address));
}

}  // namespace

std::string canonical_prefix(const std::string& text) {
  const size_t slash = text.find('/');
  if (slash == std::string::npos || slash + 1 >= text.size() || text.size() - slash > 4) return "";
  const std::string address = text.substr(0, slash), length = text.substr(slash + 1);
  if (length.find_first_not_of("0123456789") != std::string::npos) return "";
  const int family = address.find(':') == std::string::npos ? AF_INET : AF_INET6;
  const int max_length = family == AF_INET ? 32 : 128;
  if (std::stoi(length) > max_length) return "";
  unsigned char bytes[16];
  char canonical[INET6_ADDRSTRLEN];
  if (inet_pton(family, address.c_str(), bytes) != 1 ||
      !inet_ntop(family, bytes, canonical, sizeof canonical))
    return "";
  return std::string(canonical) + "/" + std::to_string(std::stoi(length));
}

cni_outcome<result_interface> create_veth(const std::string& host_name,
                                          const std::string& container_name,
                                          const pod_netns& netns) {
  auto sock = open_route_socket();
  if (!sock.ok()) return sock.error;
  nl_sock* s = sock.value->get();
  auto existing = find_link(s, host_name);
  if (!existing.ok()) return existing.error;
  if (*existing.value)
    return make_error(
        cni_code::kAlreadyAdded, "the pod's host interface " + host_name + " exists already",
        "an ADD for this container and interface ran before without a DEL (CNI spec 1.0.0, section "
        "3: a runtime must not add an attachment twice); the existing one is left as it is");

  rtnl_link* veth = rtnl_link_veth_alloc();
  if (!veth) return make_error(cni_code::kLinkSetupFailed, "out of memory");
  rtnl_link_set_name(veth, host_name.c_str());
  rtnl_link* peer = rtnl_link_veth_get_peer(veth);
  rtnl_link_set_name(peer, container_name.c_str());
  rtnl_link_set_ns_fd(peer, netns.fd());
  rtnl_link_put(peer);
  const int error = rtnl_link_add(s, veth, NLM_F_CREATE | NLM_F_EXCL);
  rtnl_link_veth_release(veth);
  if (error == -NLE_EXIST)
    return make_error(cni_code::kLinkSetupFailed,
                      "an interface named " + container_name + " exists already in " + netns.path(),
                      "CNI_IFNAME must name an interface the container does not have yet");
  if (error < 0)
    return netlink_error("cannot create the veth pair " + host_name + "/" + container_name, error);

  auto created = find_link(s, host_name);
  if (!created.ok()) return created.error;
  if (!*created.value)
    return make_error(cni_code::kLinkSetupFailed, "the new link " + host_name + " vanished");
  return result_interface{host_name, mac_of(created.value->get()), ""};
}

std::optional<cni_error> bring_up(const std::string& name, unsigned mtu) {
  auto sock = open_route_socket();
  if (!sock.ok()) return sock.error;
  return set_link_up(sock.value->get(), name, mtu);
}

cni_outcome<bool> delete_link(const std::string& name, bool only_veth) {
  auto sock = open_route_socket();
  if (!sock.ok()) return sock.error;
  auto link = find_link(sock.value->get(), name);
  if (!link.ok()) return link.error;
  if (!*link.value) return false;
  if (only_veth) {
    const char* kind = rtnl_link_get_type(link.value->get());
    if (!kind || std::strcmp(kind, "veth") != 0) return false;
  }
  const int error = rtnl_link_delete(sock.value->get(), link.value->get());
  if (is_absent(error)) return false;
  if (error < 0) return netlink_error("cannot delete link " + name, error);
  return true;
}

cni_outcome<result_interface> configure_container_end(const std::string& name,
                                                      const pod_network& network,
                                                      const std::string& sandbox) {
  auto sock = open_route_socket();
  if (!sock.ok()) return sock.error;
  nl_sock* s = sock.value->get();
  if (auto error = set_link_up(s, "lo", std::nullopt)) return *error;
  if (auto error = set_link_up(s, name, network.mtu)) return *error;
  auto link = find_link(s, name);
  if (!link.ok()) return link.error;
  if (!*link.value) return make_error(cni_code::kLinkSetupFailed, "link " + name + " vanished");
  const int ifindex = rtnl_link_get_ifindex(link.value->get());

  // The pod's own address is a host route: every other destination, its node's pods
  // included, goes through the gateway, which the data plane answers.
  if (auto error = add_address(s, ifindex, name, network.ip + "/32", AF_INET)) return *error;
  if (auto error = add_route(s, ifindex, AF_INET, network.gateway + "/32", "")) return *error;
  if (auto error = add_route(s, ifindex, AF_INET, "0.0.0.0/0", network.gateway)) return *error;
  if (network.has_ipv6()) {
    if (auto error = add_address(s, ifindex, name, network.ip6 + "/128", AF_INET6)) return *error;
    if (auto error = add_route(s, ifindex, AF_INET6, network.gateway6 + "/128", "")) return *error;
    if (auto error = add_route(s, ifindex, AF_INET6, "::/0", network.gateway6)) return *error;
  }
  // A veth hands frames over with CHECKSUM_PARTIAL, and TCP in GSO packets, when TX
  // offload is on. An af_packet port reads them with their virtio header and finishes
  // and splits them (dataplane/gso_split.h), in frames of the agent's gso_max_size at
  // most; other ports forward frames as the veth gives them, so the pod must finish its
  // checksums and segment itself there.
  if (network.tx_offload) {
    if (auto on = ethtool_tx_checksum(name, true); !on.ok()) return on.error;
    if (auto error = set_gso_max_size(s, ifindex, name, network.gso_max_size)) return *error;
  } else if (auto off = ethtool_tx_checksum(name, false); !off.ok()) {
    return off.error;
  }
  return result_interface{name, mac_of(link.value->get()), sandbox};
}

cni_outcome<std::optional<link_state>> inspect_link(const std::string& name) {
  auto sock = open_route_socket();
  if (!sock.ok()) return sock.error;
  nl_sock* s = sock.value->get();
  auto link = find_link(s, name);
  if (!link.ok()) return link.error;
  if (!*link.value) return std::optional<link_state>();
  link_state state;
  state.up = (rtnl_link_get_flags(link.value->get()) & IFF_UP) != 0;
  state.mtu = rtnl_link_get_mtu(link.value->get());
  if (const char* kind = rtnl_link_get_type(link.value->get())) state.kind = kind;
  const int ifindex = rtnl_link_get_ifindex(link.value->get());

  nl_cache* raw_cache = nullptr;
  if (const int error = rtnl_addr_alloc_cache(s, &raw_cache); error < 0)
    return netlink_error("cannot list addresses", error);
  cache_ref addresses(raw_cache);
  for (nl_object* object = nl_cache_get_first(addresses.get()); object;
       object = nl_cache_get_next(object)) {
    auto* address = reinterpret_cast<rtnl_addr*>(object);
    if (rtnl_addr_get_ifindex(address) != ifindex || !rtnl_addr_get_local(address)) continue;
    state.addresses.push_back(prefix_text(rtnl_addr_get_local(address)));
  }
  auto checksum = ethtool_tx_checksum(name, std::nullopt);
  if (!checksum.ok()) return checksum.error;
  state.tx_checksum_offload = *checksum.value;
  rtnl_link_get_gso_max_size(link.value->get(), &state.gso_max_size);
  return std::optional<link_state>(std::move(state));
}

}  // namespace meshlane::cni
