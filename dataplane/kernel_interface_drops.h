// What the kernel's own network interface under a DPDK port dropped.
//
// Ports on af_packet, af_xdp and pcap sit on a kernel interface, and the kernel can drop
// a frame there before any PMD sees it: a veth whose peer's XDP ring (256 frames) is
// full when an AF_XDP socket transmits into it (the sendto() that kicks the socket gets
// EBUSY, and DPDK 22.11's af_xdp PMD retries past it without counting: measured, 2,000-
// 13,000 of 600,000 frames a 3 s iperf3 run across two nodes on af_xdp ports), a NIC's
// ring overrun under an XDP socket, frames of a protocol nothing receives. The interface
// counts them (`ip -s link`: rx dropped, which includes rx_missed_errors, and tx
// dropped); rte_eth_stats does not. The agent exports them beside the PMD's counters so
// that a frame lost there is not lost silently.
//
// Read from /proc/thread-self/net/dev, which is the calling thread's network namespace
// whatever /sys is mounted from. The counters are the interface's own since it was
// created, as node_exporter's node_network_*_drop_total are, not reset by the agent.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace meshlane {

struct kernel_interface_drops {
  uint64_t rx = 0;  // /proc/net/dev's receive "drop": rx_dropped + rx_missed_errors
  uint64_t tx = 0;  // its transmit "drop": tx_dropped
};

// The drops of `interface` in /proc/net/dev's text `table`; nullopt when the table has no
// such interface or its line is not in the kernel's format.
std::optional<kernel_interface_drops> parse_proc_net_dev(std::string_view table, std::string_view interface);

// This thread's network namespace's /proc/net/dev (empty when unreadable): read once and
// parsed per interface when many are wanted (a scrape reads every port's).
std::string read_proc_net_dev();
// The drops of `interface` in this thread's network namespace; nullopt when it has none.
std::optional<kernel_interface_drops> read_kernel_interface_drops(const std::string& interface);

}  // namespace meshlane
