// The dataplane's entries in the subsystem registry: metric families, status, live
// tunables and the `flows` query. Everything here runs on the control thread and reads
// per-worker counters without locks (each has one writer).
#include <linux/if_packet.h>
#include <net/if.h>
#include <rte_cycles.h>
#include <rte_ethdev.h>
#include <sys/socket.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string_view>

#include "dataplane/dataplane.h"
#include "dataplane/kernel_interface_drops.h"
#include "dataplane/pmd_sockets.h"

namespace meshlane {

namespace {

// tunables.worker_nice as the document says it: "auto" or the number.
nlohmann::json worker_nice_shown(int8_t tuned) {
  return tuned == kWorkerNiceAuto ? nlohmann::json("auto") : nlohmann::json(int{tuned});
}

// Why the kernel refused the worker's last nice change ("" when it did not).
std::string nice_refused(const worker_state& w) {
  const int error = w.nice_error.load(std::memory_order_relaxed);
  return error ? std::strerror(error) : "";
}

metric_family family(std::string name, std::string help, metric_kind kind = metric_kind::counter) {
  metric_family f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.kind = kind;
  return f;
}

std::string address_text(const uint8_t* bytes16) {
  ip_address a;
  std::memcpy(a.bytes.data(), bytes16, 16);
  return a.to_string();
}

std::string mac_text(const wire::mac_address& mac) {
  char text[18];
  std::snprintf(text, sizeof text, "%02x:%02x:%02x:%02x:%02x:%02x", mac.bytes[0], mac.bytes[1], mac.bytes[2],
                mac.bytes[3], mac.bytes[4], mac.bytes[5]);
  return text;
}

const char* role_text(port_role role) { return role == port_role::uplink ? "uplink" : "pod"; }

// What the port's driver saw lost, read on the control thread at scrape time:
// rte_eth_stats_get and the xstats of the PMDs we use (af_packet, af_xdp, ring, memif)
// read per-queue counters the workers write and kernel socket statistics, and take no
// lock a worker holds. Callers hold ports_mutex_: the kernel's af_packet drops are read
// and cleared here and added to `af_packet_drops`, which two readers at once could lose.
// Zeros (and no xstats) when the driver does not answer.
struct port_loss {
  uint64_t rx_missed = 0, rx_errors = 0, tx_errors = 0, rx_nombuf = 0;
  // The kernel interface under an af_packet, af_xdp or pcap port (kernel_interface_drops.h);
  // none for ports without one.
  std::optional<kernel_interface_drops> kernel;
  std::vector<std::pair<std::string, uint64_t>> xstats;
};

// Frames the kernel dropped because the RX ring of an AF_PACKET socket of this process
// bound to `ifindex` was full (PACKET_STATISTICS tp_drops; reading clears them).
// DPDK 22.11's af_packet PMD opens such a socket per queue pair but does not report
// these drops (its imissed stays 0; later releases add them); pmd_sockets.h finds them.
uint64_t af_packet_ring_drops(int ifindex) {
  uint64_t drops = 0;
  for (const int fd : af_packet_pmd_sockets(ifindex)) {
    tpacket_stats_v3 stats{};
    socklen_t length = sizeof stats;
    if (getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &stats, &length) == 0) drops += stats.tp_drops;
  }
  return drops;
}

port_loss read_port_loss(uint16_t port, packet_ring_port* ring, bool with_xstats, uint64_t& af_packet_drops,
                         std::string_view net_dev) {
  port_loss loss;
  if (ring) {  // meshlane's own port (packet_ring_port.h): its counters, no xstats
    const packet_ring_port::loss own = ring->read_loss();
    loss.rx_missed = own.rx_missed;
    loss.rx_errors = own.rx_errors;
    loss.tx_errors = own.tx_errors;
    loss.rx_nombuf = own.rx_nombuf;
    loss.kernel = parse_proc_net_dev(net_dev, ring->interface());
    return loss;
  }
  rte_eth_dev_info info{};
  if (rte_eth_dev_info_get(port, &info) == 0 && info.driver_name && info.if_index > 0) {
    const bool af_packet = std::strcmp(info.driver_name, "net_af_packet") == 0;
    if (af_packet) af_packet_drops += af_packet_ring_drops(int(info.if_index));
    char name[IF_NAMESIZE];
    if ((af_packet || std::strcmp(info.driver_name, "net_af_xdp") == 0 ||
         std::strcmp(info.driver_name, "net_pcap") == 0) &&
        if_indextoname(info.if_index, name))
      loss.kernel = parse_proc_net_dev(net_dev, name);
  }
  loss.rx_missed = af_packet_drops;
  rte_eth_stats stats{};
  if (rte_eth_stats_get(port, &stats) == 0) {
    // Both read and clear the kernel's count: a PMD that reports it too adds its share.
    loss.rx_missed += stats.imissed;
    loss.rx_errors = stats.ierrors;
    loss.tx_errors = stats.oerrors;
    loss.rx_nombuf = stats.rx_nombuf;
  }
  if (!with_xstats) return loss;
  const int count = rte_eth_xstats_get_names(port, nullptr, 0);
  if (count <= 0) return loss;
  std::vector<rte_eth_xstat_name> names(static_cast<size_t>(count));
  std::vector<rte_eth_xstat> values(static_cast<size_t>(count));
  if (rte_eth_xstats_get_names(port, names.data(), static_cast<unsigned>(count)) != count) return loss;
  const int got = rte_eth_xstats_get(port, values.data(), static_cast<unsigned>(count));
  if (got <= 0 || got > count) return loss;
  for (int i = 0; i < got; ++i) {
    if (values[i].id >= static_cast<uint64_t>(count)) continue;
    loss.xstats.emplace_back(names[values[i].id].name, values[i].value);
  }
  return loss;
}

}  // namespace

void worker_pool::register_with(subsystem_registry& registry) {
  registry.add_scoped_collector("dataplane", [this](std::vector<metric_family>& out, const collect_scope& scope) {
    auto rx_packets = family("meshlane_dataplane_port_rx_packets_total", "Packets received per port.");
    auto rx_bytes = family("meshlane_dataplane_port_rx_bytes_total", "Bytes received per port.");
    auto tx_packets = family("meshlane_dataplane_port_tx_packets_total", "Packets sent per port.");
    auto tx_bytes = family("meshlane_dataplane_port_tx_bytes_total", "Bytes sent per port.");
    auto rx_missed = family("meshlane_dataplane_port_rx_missed_total",
                            "Packets the port's driver lost before a worker received them (RX ring full: rte_eth_stats imissed).");
    auto rx_errors = family("meshlane_dataplane_port_rx_errors_total",
                            "Erroneous packets the port's driver refused on receive (rte_eth_stats ierrors).");
    auto tx_errors = family("meshlane_dataplane_port_tx_errors_total",
                            "Packets the port's driver failed to send (rte_eth_stats oerrors).");
    auto rx_nombuf = family("meshlane_dataplane_port_rx_nombuf_total",
                            "Receives that found no free mbuf (rte_eth_stats rx_nombuf).");
    auto kernel_dropped = family(
        "meshlane_dataplane_port_kernel_dropped_total",
        "Frames the kernel interface under an af_packet, af_xdp or pcap port dropped, as `ip -s link` counts "
        "them since the interface was made (rx: rx_dropped + rx_missed_errors; tx: tx_dropped, e.g. a veth "
        "whose peer's XDP ring was full); the port driver's own counters do not see these, except that on an "
        "af_xdp port over a veth rx includes the frames its XDP socket dropped, which rx_missed counts too.");
    auto merged_packets = family("meshlane_dataplane_port_tx_merged_packets_total",
                                 "GSO packets a pod port sent, each a run of TCP segments of one stream or of UDP "
                                 "datagrams of one flow merged (dataplane/tcp_coalesce.h, udp_coalesce.h); "
                                 "tx_packets counts their segments.");
    auto merged_segments = family("meshlane_dataplane_port_tx_merged_segments_total",
                                "TCP segments and UDP datagrams a pod port sent inside merged GSO packets.");
    auto split_packets = family("meshlane_dataplane_port_rx_split_packets_total",
                                "GSO packets a pod port received from its pod (TX segmentation offload on the "
                                "pod's veth) and split into segments (dataplane/gso_split.h); rx_packets counts "
                                "the segments.");
    auto split_segments = family("meshlane_dataplane_port_rx_split_segments_total",
                                 "Segments a pod port made of the GSO packets it received.");
    auto xstats = family("meshlane_dataplane_port_xstats_total",
                         "The port driver's extended statistics (rte_eth_xstats), by the driver's own names.");
    auto not_registered = family("meshlane_dataplane_egress_not_registered_total",
                                 "New outbound flows refused under egress.mode registry_only, by pod port.");
    auto refused_flows = family("meshlane_dataplane_egress_refused_total",
                                "New outbound flows refused, by pod port and reason (the drop reason).");
    const std::string net_dev = read_proc_net_dev();  // the kernel interfaces' drops, read once
    std::unique_lock ports_lock(ports_mutex_);  // hot-plug renames and retires ports
    for (uint16_t p = 0; p < kMaxPorts; ++p) {
      const port_info& info = ports_->ports[p];
      if (info.role == port_role::unused) continue;
      uint64_t sums[4] = {}, refused = 0;
      for (const auto& w : workers_) refused += w->egress_not_registered[p].get();
      if (info.role == port_role::pod) {
        not_registered.samples.push_back({{{"port", info.interface}}, double(refused)});
        uint64_t exhausted = 0, unavailable = 0;
        for (const auto& w : workers_) {
          exhausted += w->egress_ports_exhausted[p].get();
          unavailable += w->egress_gateway_unavailable[p].get();
        }
        refused_flows.samples.push_back(
            {{{"port", info.interface}, {"reason", "egress_not_registered"}}, double(refused)});
        refused_flows.samples.push_back(
            {{{"port", info.interface}, {"reason", "snat_ports_exhausted"}}, double(exhausted)});
        refused_flows.samples.push_back(
            {{{"port", info.interface}, {"reason", "egress_gateway_unavailable"}}, double(unavailable)});
      }
      for (const auto& w : workers_) {
        sums[0] += w->port_rx[p].packets.get();
        sums[1] += w->port_rx[p].bytes.get();
        sums[2] += w->port_tx[p].packets.get();
        sums[3] += w->port_tx[p].bytes.get();
      }
      const std::vector<std::pair<std::string, std::string>> labels{
          {"port", info.interface}, {"role", role_text(info.role)}};
      rx_packets.samples.push_back({labels, double(sums[0])});
      rx_bytes.samples.push_back({labels, double(sums[1])});
      tx_packets.samples.push_back({labels, double(sums[2])});
      tx_bytes.samples.push_back({labels, double(sums[3])});
      packet_ring_port* ring = ports_->rings[p].load();
      const port_loss loss = read_port_loss(p, ring, true, af_packet_ring_drops_[p], net_dev);
      if (ring && ring->coalesces()) {
        const packet_ring_port::coalesced merged = ring->read_coalesced();
        merged_packets.samples.push_back({labels, double(merged.packets)});
        merged_segments.samples.push_back({labels, double(merged.segments)});
      }
      if (ring && ring->receives_offloads()) {
        const packet_ring_port::split split = ring->read_split();
        split_packets.samples.push_back({labels, double(split.packets)});
        split_segments.samples.push_back({labels, double(split.segments)});
      }
      rx_missed.samples.push_back({labels, double(loss.rx_missed)});
      rx_errors.samples.push_back({labels, double(loss.rx_errors)});
      tx_errors.samples.push_back({labels, double(loss.tx_errors)});
      rx_nombuf.samples.push_back({labels, double(loss.rx_nombuf)});
      if (loss.kernel) {
        auto rx = labels, tx = labels;
        rx.emplace_back("direction", "rx");
        tx.emplace_back("direction", "tx");
        kernel_dropped.samples.push_back({std::move(rx), double(loss.kernel->rx)});
        kernel_dropped.samples.push_back({std::move(tx), double(loss.kernel->tx)});
      }
      for (const auto& [name, value] : loss.xstats) {
        auto with_name = labels;
        with_name.emplace_back("name", name);
        xstats.samples.push_back({std::move(with_name), double(value)});
      }
    }
    auto drops = family("meshlane_dataplane_drops_total", "Packets dropped, by worker and reason.");
    auto polls = family("meshlane_dataplane_worker_polls_total",
                        "Worker loop iterations that received packets (busy) or none (idle).");
    auto encap = family("meshlane_dataplane_geneve_packets_total", "Geneve encapsulations and decapsulations.");
    auto esp = family("meshlane_dataplane_esp_packets_total",
                      "ESP encapsulations and verified decapsulations of encrypted routes.");
    auto generated = family("meshlane_dataplane_replies_total",
                            "Packets the workers answered themselves (ARP/NDP, ICMP errors).");
    auto icmp_errors = family("meshlane_dataplane_icmp_errors_total",
                              "ICMP errors about service flows translated (NAT of the quoted packet), and ICMP "
                              "errors the workers did not send for their rate limit.");
    auto egress = family("meshlane_dataplane_egress_total",
                         "Egress (source NAT to outside the cluster): flows made, packets out, replies in.");
    for (const auto& w : workers_) {
      const std::string worker = std::to_string(w->index);
      for (unsigned r = 1; r < kDropReasonCount; ++r)
        drops.samples.push_back(
            {{{"worker", worker}, {"reason", to_string(static_cast<drop_reason>(r))}}, double(w->drops[r].get())});
      polls.samples.push_back({{{"worker", worker}, {"kind", "busy"}}, double(w->busy_polls.get())});
      polls.samples.push_back({{{"worker", worker}, {"kind", "idle"}}, double(w->idle_polls.get())});
      encap.samples.push_back({{{"worker", worker}, {"direction", "encap"}}, double(w->geneve_encapsulated.get())});
      encap.samples.push_back({{{"worker", worker}, {"direction", "decap"}}, double(w->geneve_decapsulated.get())});
      esp.samples.push_back({{{"worker", worker}, {"direction", "encap"}}, double(w->esp_encapsulated.get())});
      esp.samples.push_back({{{"worker", worker}, {"direction", "decap"}}, double(w->esp_decapsulated.get())});
      generated.samples.push_back({{{"worker", worker}, {"kind", "neighbour"}}, double(w->neighbour_messages.get())});
      generated.samples.push_back({{{"worker", worker}, {"kind", "icmp_error"}}, double(w->icmp_generated.get())});
      icmp_errors.samples.push_back({{{"worker", worker}, {"kind", "translated"}}, double(w->icmp_errors_translated.get())});
      icmp_errors.samples.push_back({{{"worker", worker}, {"kind", "rate_limited"}}, double(w->icmp_rate_limited.get())});
      egress.samples.push_back({{{"worker", worker}, {"kind", "flows"}}, double(w->egress_flows.get())});
      egress.samples.push_back({{{"worker", worker}, {"kind", "packets_out"}}, double(w->egress_packets_out.get())});
      egress.samples.push_back({{{"worker", worker}, {"kind", "packets_in"}}, double(w->egress_packets_in.get())});
      egress.samples.push_back(
          {{{"worker", worker}, {"kind", "forward_restored"}}, double(w->egress_forward_restored.get())});
    }
    auto service_packets = family("meshlane_dataplane_service_packets_total", "Packets load-balanced per service.");
    auto service_bytes = family("meshlane_dataplane_service_bytes_total", "Bytes load-balanced per service.");
    auto service_flows = family("meshlane_dataplane_service_new_flows_total", "New flows per service.");
    auto external_flows = family("meshlane_dataplane_external_service_new_flows_total",
                                 "New outbound flows per external service (issue 18), whatever egress.mode.");
    auto external_packets = family("meshlane_dataplane_external_service_packets_total",
                                   "Packets of external services' flows, both ways (issue 18).");
    auto external_bytes = family("meshlane_dataplane_external_service_bytes_total",
                                 "Frame bytes of external services' flows, both ways (issue 18).");
    // Names from the view of the last install (published_names): a reference, no lock
    // the install holds.
    const std::shared_ptr<const published_names> names = this->names();
    for (size_t slot = 1; slot < names->external_services.size(); ++slot) {
      lb_counters_sum sum;
      for (const auto& w : workers_) {
        const lb_counters& c = (*w->external_service)[slot];
        sum.new_flows += c.new_flows.get(), sum.packets += c.packets.get(), sum.bytes += c.bytes.get();
      }
      const std::vector<std::pair<std::string, std::string>> labels{
          {"service", names->external_services[slot]}};
      external_flows.samples.push_back({labels, double(sum.new_flows)});
      external_packets.samples.push_back({labels, double(sum.packets)});
      external_bytes.samples.push_back({labels, double(sum.bytes)});
    }
    const std::vector<lb_counters_sum> service_sums = service_counters(workers_, *names);
    for (size_t s = 0; s < names->services.size(); ++s) {
      if (names->services[s].empty()) continue;  // a freed slot
      if (!scope.wants_service(names->services[s])) {
        scope.left_out(3);
        continue;
      }
      const lb_counters_sum& sum = service_sums[s];
      std::vector<std::pair<std::string, std::string>> labels{{"service", names->services[s]}};
      service_packets.samples.push_back({labels, double(sum.packets)});
      service_bytes.samples.push_back({labels, double(sum.bytes)});
      service_flows.samples.push_back({std::move(labels), double(sum.new_flows)});
    }
    out.push_back({"meshlane_dataplane_counter_slots", "Counter slots in use, by kind (a backend's lives while a table names it or a flow uses it).",
                   metric_kind::gauge,
                   {{{{"kind", "service"}}, double(names->live_services)},
                    {{{"kind", "backend"}}, double(names->live_backends)}}});
    auto backend_packets = family("meshlane_dataplane_backend_packets_total", "Packets per service backend.");
    auto backend_bytes = family("meshlane_dataplane_backend_bytes_total", "Bytes per service backend.");
    auto backend_flows = family("meshlane_dataplane_backend_new_flows_total", "New flows per service backend.");
    // A scrape of everything lists the backends tunables.backend_series names (the
    // default: those this node has counted something for; a cluster's every backend is
    // millions of zero series). A page's scope lists every backend of its services.
    const auto series_mode = static_cast<backend_series>(settings_.backend_series.load(std::memory_order_relaxed));
    const bool every_backend = !scope.every_service() || series_mode == backend_series::all;
    const bool none = series_mode == backend_series::off && scope.every_service();
    size_t backends_unlisted = none ? names->live_backends : 0;
    for (size_t b = 0; b < names->backends.size() && !none; ++b) {
      if (names->backend_free(b)) continue;
      if (!scope.wants_service(names->backend_service_name(b))) {
        scope.left_out(3);
        continue;
      }
      uint64_t sums[3] = {};
      for (const auto& w : workers_) {
        sums[0] += w->backend[b].packets.get();
        sums[1] += w->backend[b].bytes.get();
        sums[2] += w->backend[b].new_flows.get();
      }
      if (!every_backend && (sums[0] | sums[2]) == 0) {
        ++backends_unlisted;
        continue;
      }
      std::vector<std::pair<std::string, std::string>> labels{{"service", names->backend_service_name(b)},
                                                              {"backend", names->backend_address(b)}};
      backend_packets.samples.push_back({labels, double(sums[0])});
      backend_bytes.samples.push_back({labels, double(sums[1])});
      backend_flows.samples.push_back({std::move(labels), double(sums[2])});
    }
    out.push_back({"meshlane_dataplane_backend_series_unlisted",
                   "Live backends this scrape wrote no per-backend series for (tunables.backend_series: "
                   "\"used\" lists a backend once this node counted a packet for it, \"off\" none).",
                   metric_kind::gauge,
                   {{{{"mode", to_string(series_mode)}}, double(backends_unlisted)}}});
    {
      // tunables.worker_nice as each worker thread runs it (0 while busy polling), and
      // whether the kernel refused the last change (EACCES: the agent lacks CAP_SYS_NICE).
      auto nice = family("meshlane_dataplane_worker_nice",
                         "The nice value each worker thread runs at: tunables.worker_nice under the adaptive "
                         "idle policy (auto: -10, 0 on a node whose pods are on af_xdp), 0 while busy polling.",
                         metric_kind::gauge);
      auto refused = family("meshlane_dataplane_worker_nice_refused",
                            "1 when the kernel refused a worker thread's last nice change (the agent lacks "
                            "CAP_SYS_NICE); the worker keeps the value it had.",
                            metric_kind::gauge);
      for (const auto& w : workers_) {
        nice.samples.push_back({{{"worker", std::to_string(w->index)}}, double(w->nice.load(std::memory_order_relaxed))});
        refused.samples.push_back(
            {{{"worker", std::to_string(w->index)}}, w->nice_error.load(std::memory_order_relaxed) ? 1.0 : 0.0});
      }
      out.push_back(std::move(nice));
      out.push_back(std::move(refused));
    }
    auto evictions = family("meshlane_dataplane_flow_evictions_total",
                            "Live flows evicted from a full flow-table bucket, per worker.");
    auto restored = family("meshlane_dataplane_flow_entries_restored_total",
                           "Reverse entries rebuilt from their live forward entry after an eviction, per worker.");
    auto handoffs = family("meshlane_dataplane_handoffs_total",
                           "Packets a worker handed to the worker that owns their flow (sent), and took from "
                           "the others (received); a full inbox is meshlane_dataplane_drops_total{reason=\"handoff_ring_full\"}.");
    auto wakeups = family("meshlane_dataplane_handoff_wakeups_total",
                          "Hand-offs after which the sending worker woke the owner from its idle sleep.");
    auto sleeps = family("meshlane_dataplane_idle_sleeps_total",
                         "The adaptive idle policy's sleeps by how they ended: at their timeout, woken by a frame on "
                         "one of the worker's watched RX queues (meshlane's own af_packet ports, DPDK's af_packet and af_xdp "
                         "ports; status: dataplane.workers[].watched_queues), or by another worker's hand-off.");
    auto disarms = family("meshlane_dataplane_idle_watch_disarms_total",
                          "Times a worker took its RX queues' sockets out of its sleep's epoll set because traffic "
                          "flowed (a watched socket calls into epoll for every frame it receives); they go back before "
                          "its next sleep that a frame may end.");
    auto fragments = family("meshlane_dataplane_fragments_total",
                            "Fragments of datagrams that entered a worker and were forwarded one by one: "
                            "first fragments (their ports remembered) and later ones given their first's; and "
                            "fragments made (kind=\"made\") of IPv4 packets without DF too big for the tunnel; a "
                            "later fragment without its first is meshlane_dataplane_drops_total{reason="
                            "\"ipv4_fragment\"|\"ipv6_fragment\"}.");
    for (const auto& w : workers_) {
      fragments.samples.push_back({{{"worker", std::to_string(w->index)}, {"kind", "first"}}, double(w->fragments_first.get())});
      fragments.samples.push_back({{{"worker", std::to_string(w->index)}, {"kind", "later"}}, double(w->fragments_later.get())});
      fragments.samples.push_back({{{"worker", std::to_string(w->index)}, {"kind", "made"}}, double(w->fragments_made.get())});
      evictions.samples.push_back({{{"worker", std::to_string(w->index)}}, double(w->flows.evictions())});
      restored.samples.push_back({{{"worker", std::to_string(w->index)}}, double(w->reverse_entries_restored.get())});
      handoffs.samples.push_back({{{"worker", std::to_string(w->index)}, {"direction", "sent"}}, double(w->handed_off.get())});
      handoffs.samples.push_back(
          {{{"worker", std::to_string(w->index)}, {"direction", "received"}}, double(w->handoffs_received.get())});
      wakeups.samples.push_back({{{"worker", std::to_string(w->index)}}, double(w->handoff_wakeups.get())});
      for (unsigned e = 0; e < w->idle_sleeps.size(); ++e)
        sleeps.samples.push_back({{{"worker", std::to_string(w->index)}, {"ended", idle_wakeup::kSleptNames[e]}},
                                  double(w->idle_sleeps[e].get())});
      disarms.samples.push_back({{{"worker", std::to_string(w->index)}}, double(w->watch_disarms.get())});
    }
    for (auto* f : {&rx_packets, &rx_bytes, &tx_packets, &tx_bytes, &merged_packets, &merged_segments, &split_packets, &split_segments, &rx_missed,
                    &rx_errors, &tx_errors, &rx_nombuf, &kernel_dropped, &xstats, &drops, &polls, &encap, &esp, &generated, &icmp_errors, &egress,
                    &not_registered, &refused_flows, &external_flows, &external_packets, &external_bytes,
                    &service_packets, &service_bytes, &service_flows, &backend_packets, &backend_bytes,
                    &backend_flows, &evictions, &restored, &handoffs, &wakeups, &sleeps, &disarms, &fragments})
      out.push_back(std::move(*f));
    esp_->collect(out);
  });

  registry.add_status("dataplane", [this]() {
    const std::string net_dev = read_proc_net_dev();
    std::lock_guard ports_lock(ports_mutex_);  // hot-plug renames and retires ports and queues
    nlohmann::json ports = nlohmann::json::array();
    for (uint16_t p = 0; p < kMaxPorts; ++p) {
      const port_info& info = ports_->ports[p];
      if (info.role == port_role::unused) continue;
      packet_ring_port* ring = ports_->rings[p].load();
      rte_eth_link link{};
      if (ring) link.link_status = ring->link_up() ? RTE_ETH_LINK_UP : RTE_ETH_LINK_DOWN;
      else rte_eth_link_get_nowait(p, &link);
      const uint64_t neighbour = info.neighbour_mac.load(std::memory_order_relaxed);
      uint64_t rx = 0, tx = 0;
      for (const auto& w : workers_) {
        rx += w->port_rx[p].packets.get();
        tx += w->port_tx[p].packets.get();
      }
      const port_loss loss = read_port_loss(p, ring, false, af_packet_ring_drops_[p], net_dev);
      // A pod port that merges TCP segments and UDP datagrams (tcp_coalesce.h,
      // udp_coalesce.h): how many GSO packets and the segments in them; null where the
      // port does not.
      nlohmann::json merged_packets = nullptr, merged_segments = nullptr;
      if (ring && ring->coalesces()) {
        const packet_ring_port::coalesced merged = ring->read_coalesced();
        merged_packets = merged.packets;
        merged_segments = merged.segments;
      }
      // A pod port that reads its pod's GSO packets (gso_split.h): how many, and the
      // segments made of them; null where the port does not.
      nlohmann::json split_packets = nullptr, split_segments = nullptr;
      if (ring && ring->receives_offloads()) {
        const packet_ring_port::split split = ring->read_split();
        split_packets = split.packets;
        split_segments = split.segments;
      }
      ports.push_back({{"port_id", p},
                       {"interface", info.interface},
                       {"role", role_text(info.role)},
                       {"mac", mac_text(info.mac)},
                       {"rx_ring", info.rx_ring},
                       {"tx_ring", info.tx_ring},
                       {"link_up", link.link_status == RTE_ETH_LINK_UP},
                       {"neighbour_mac", neighbour ? mac_text(wire::mac_address::from_u64(neighbour)) : ""},
                       {"rx_packets", rx},
                       {"tx_packets", tx},
                       {"tx_merged_packets", merged_packets},
                       {"tx_merged_segments", merged_segments},
                       {"rx_split_packets", split_packets},
                       {"rx_split_segments", split_segments},
                       {"rx_missed", loss.rx_missed},
                       {"rx_errors", loss.rx_errors},
                       {"tx_errors", loss.tx_errors},
                       {"rx_nombuf", loss.rx_nombuf},
                       {"kernel_rx_dropped", loss.kernel ? nlohmann::json(loss.kernel->rx) : nlohmann::json()},
                       {"kernel_tx_dropped", loss.kernel ? nlohmann::json(loss.kernel->tx) : nlohmann::json()}});
    }
    nlohmann::json workers = nlohmann::json::array();
    const uint64_t now = rte_rdtsc();
    const flow_timeouts timeouts = settings_.timeouts();
    for (size_t i = 0; i < workers_.size(); ++i) {
      const worker_state& w = *workers_[i];
      const double busy = double(w.busy_polls.get()), idle = double(w.idle_polls.get());
      nlohmann::json queues = nlohmann::json::array();
      for (const rx_queue& q : rx_plan_.load(std::memory_order_acquire)->per_worker[i])
        queues.push_back({{"port", ports_->ports[q.port].interface},
                          {"queue", q.queue},
                          {"watchable", q.wake_fd >= 0},
                          // Whether the queue's kernel socket busy-polls (pmd_sockets.h): never
                          // on the agent's own ports, and DPDK's af_xdp ones are opened without.
                          {"kernel_busy_poll",
                           q.wake_fd >= 0 ? nlohmann::json(socket_busy_polls(q.wake_fd)) : nlohmann::json()}});
      workers.push_back({{"worker", w.index},
                         {"lcore", i < lcores_.size() ? int(lcores_[i]) : -1},
                         {"rx_queues", queues},
                         {"busy_poll_fraction", busy + idle > 0 ? busy / (busy + idle) : 0.0},
                         {"flows_live", w.flows.live_count(now, timeouts)},
                         {"nice", w.nice.load(std::memory_order_relaxed)},
                         {"nice_refused", nice_refused(w)},
                         // Of the queues above, those whose frames end its sleeps of 100 µs or
                         // more (idle_wakeup.h), and how often traffic took them out meanwhile.
                         {"watched_queues", w.watched_queues.load(std::memory_order_relaxed)},
                         {"watch_disarms", w.watch_disarms.get()},
                         {"flow_capacity", w.flows.capacity()}});
    }
    return nlohmann::json{{"generation", generation()},
                          {"running", running_.load()},
                          {"idle_policy", settings_.busy_poll.load() ? "busy_poll" : "adaptive"},
                          {"burst_size", settings_.burst_size.load()},
                          {"idle_sleep_max_us", settings_.idle_sleep_max_us.load()},
                          {"worker_nice", worker_nice_shown(settings_.worker_nice.load())},
                          {"worker_nice_auto", int{options_.worker_nice_auto}},
                          {"pod_gro", ports_->pod_gro.load() != 0},
                          {"uplink_mtu", ports_->uplink_mtu},
                          // What one packet buffer and one af_packet ring frame hold
                          // (control/dataplane_config.h; 9,216 with jumbo frames).
                          {"packet_buffer_bytes", packet_buffer_room(ports_->uplink_mtu)},
                          {"ports", ports},
                          {"workers", workers},
                          {"encryption", esp_->status()}};
  });

  // One name per live tunable: burst size, idle policy, idle sleep and flow timeouts are
  // the document's (`tables.*`, control_requests.cpp), which every publish applies here
  // (apply_tuning); a second, data-plane-only name for them was overwritten by the next
  // publish. What the document does not hold is tuned here.
  registry.add_tunable("dataplane.geneve_udp_checksum",
                       {"true: compute the outer UDP checksum of Geneve frames; false: send zero (allowed over IPv4)",
                        [this] { return nlohmann::json(ports_->geneve_udp_checksum.load() != 0); },
                        [this](const nlohmann::json& v) -> std::string {
                          if (!v.is_boolean()) return "must be true or false, got " + v.dump();
                          ports_->geneve_udp_checksum.store(v.get<bool>() ? 1 : 0);
                          return {};
                        }});

  registry.add_tunable("dataplane.pod_gro",
                       {"true: runs of TCP segments of one stream, and of UDP datagrams of one flow, into a pod on an "
                        "af_packet port go as one GSO packet each, as GRO would make them; false: every frame alone",
                        [this] { return nlohmann::json(ports_->pod_gro.load() != 0); },
                        [this](const nlohmann::json& v) -> std::string {
                          if (!v.is_boolean()) return "must be true or false, got " + v.dump();
                          ports_->pod_gro.store(v.get<bool>() ? 1 : 0);
                          return {};
                        }});

  // Flow records of every worker's shard, paged: {"offset": N, "limit": M} (limit <= 1000).
  registry.add_query("flows", [this](const nlohmann::json& args) {
    const uint64_t offset = args.is_object() && args.contains("offset") && args["offset"].is_number_unsigned()
                                ? args["offset"].get<uint64_t>() : 0;
    uint64_t limit = args.is_object() && args.contains("limit") && args["limit"].is_number_unsigned()
                         ? args["limit"].get<uint64_t>() : 100;
    limit = std::min<uint64_t>(limit, 1000);
    const uint64_t now = rte_rdtsc();
    const uint64_t hz = rte_get_tsc_hz();
    const flow_timeouts timeouts = settings_.timeouts();
    nlohmann::json rows = nlohmann::json::array();
    uint64_t index = 0;
    // Backend names from the view of the last install (published_names): a reference.
    const std::shared_ptr<const published_names> names = this->names();
    for (const auto& w : workers_) {
      for (uint32_t i = 0; i < w->flows.capacity(); ++i) {
        // A consistent copy (the worker keeps writing its shard); skipped if it is busy.
        flow_entry entry;
        if (!w->flows.read(i, entry) || !entry.in_use || w->flows.expired(entry, now, timeouts)) continue;
        if (index++ < offset || rows.size() >= limit) continue;
        const bool named = !names->backend_free(entry.backend_slot);
        const std::string service = named ? names->backend_service_name(entry.backend_slot) : "";
        const std::string backend = named ? names->backend_address(entry.backend_slot) : "";
        rows.push_back({{"worker", w->index},
                        {"direction", entry.direction == flow_direction::forward ? "forward" : "reverse"},
                        {"protocol", entry.protocol == wire::kProtoTcp   ? "tcp"
                                     : entry.protocol == wire::kProtoUdp ? "udp"
                                                                         : "icmp"},
                        {"source", address_text(entry.key.source) + ":" + std::to_string(entry.key.source_port)},
                        {"destination", address_text(entry.key.destination) + ":" + std::to_string(entry.key.destination_port)},
                        {"rewrite", address_text(entry.rewrite_address) + ":" + std::to_string(entry.rewrite_port)},
                        {"state", entry.state == flow_state::established ? "established"
                                  : entry.state == flow_state::closing   ? "closing"
                                                                          : "transitory"},
                        {"service", entry.flags & kFlowEgress ? std::string("(egress)") : service},
                        {"backend", backend},
                        {"idle_seconds", double(now - entry.last_seen) / double(hz)}});
        nlohmann::json& row = rows.back();
        if (entry.flags & kFlowSecondRewrite) {
          // The other end's rewrite: ingress towards another node (the lent gateway port
          // on the way in, the client on the way back), or the client port this node chose
          // (kFlowClientPort: the client's address with that port, and back).
          const ip_address second = second_rewrite_address(entry, names->gateway_ip6.data(), lent_clients_.get());
          row[entry.direction == flow_direction::forward ? "source_rewrite" : "destination_rewrite"] =
              address_text(second.bytes.data()) + ":" + std::to_string(entry.second_port);
        }
        if (entry.flags & kFlowToLastHop) {
          wire::mac_address mac;
          std::memcpy(mac.bytes, entry.last_hop_mac, 6);
          row["last_hop"] = mac_text(mac);  // replies leave by the uplink to this neighbour
        }
      }
    }
    return nlohmann::json{{"offset", offset}, {"limit", limit}, {"total", index}, {"rows", rows}};
  });

  // The ESP SAs of encrypted routes (no key material), paged like flows.
  // L4 authorization's sampled denials (policy_telemetry.cpp), for `flows --follow`.
  registry.add_query("policy_denials", [this](const nlohmann::json& args) {
    const uint64_t after = args.contains("after") && args["after"].is_number_unsigned() ? args["after"].get<uint64_t>() : 0;
    return policy_denials_after(after);
  });
  registry.add_query("sas", [this](const nlohmann::json& args) {
    const uint64_t offset = args.is_object() && args.contains("offset") && args["offset"].is_number_unsigned()
                                ? args["offset"].get<uint64_t>() : 0;
    const uint64_t limit = args.is_object() && args.contains("limit") && args["limit"].is_number_unsigned()
                               ? args["limit"].get<uint64_t>() : 100;
    const nlohmann::json all = esp_->rows();
    nlohmann::json rows = nlohmann::json::array();
    for (uint64_t i = offset; i < all.size() && rows.size() < limit; ++i) rows.push_back(all[i]);
    return nlohmann::json{{"offset", offset}, {"limit", limit}, {"total", all.size()}, {"rows", rows}};
  });
}

}  // namespace meshlane
