// The kernel's own receive path on interfaces the DPDK workers own through af_packet.
//
// An af_packet socket gets a copy of every frame the interface receives (its tap runs
// first), and then the kernel's stack processes the frame too: in the node's namespace
// every packet a pod sends, and every packet from the underlay, went through ip_rcv and a
// route lookup to be dropped as not for this host (measured: a node namespace counted
// 720,000-800,000 IpInReceives in 10 s of cross-node benchmark traffic), in the softirq
// of whoever sent it (the pod's process, the other agent's worker). A tcx ingress
// program that drops every frame runs after the taps and before the stack
// (__netif_receive_skb_core: ptype_all, then sch_handle_ingress, then the protocols), so
// the af_packet port still receives everything and the kernel's stack nothing.
//
// The program is two instructions (r0 = TC_ACT_SHOT; exit), loaded once per process with
// the bpf system call (no object file); each interface gets a tcx link that lives as long
// as its file descriptor: closed when the port goes, or by the kernel when the agent exits
// or dies, so nothing stays behind. tcx needs Linux 6.6; on older kernels the links are
// refused and the kernel keeps receiving (reported, not an error).
#pragma once

#include <memory>
#include <string>

namespace meshlane {

// A tcx link of the drop program: detached when the last owner lets it go.
class kernel_ingress_drop {
 public:
  explicit kernel_ingress_drop(int link_fd) : fd_(link_fd) {}
  ~kernel_ingress_drop();
  kernel_ingress_drop(const kernel_ingress_drop&) = delete;
  kernel_ingress_drop& operator=(const kernel_ingress_drop&) = delete;

 private:
  int fd_;
};

// Attaches the drop to `interface` (in the calling thread's network namespace). Null with
// `why` set when it cannot.
std::shared_ptr<const kernel_ingress_drop> drop_kernel_ingress(const std::string& interface, std::string& why);

// Whether the kernel holds an address on `interface` that it may need traffic for: any
// IPv4 address or an IPv6 address that is not link-local. The uplink keeps the kernel's
// receive path when it has one (a host's own networking on a shared NIC).
bool kernel_has_address_on(const std::string& interface);

}  // namespace meshlane
