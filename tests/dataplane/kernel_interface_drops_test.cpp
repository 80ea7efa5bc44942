// What the kernel interface under a port dropped (dataplane/kernel_interface_drops.h):
// the /proc/net/dev parser on the kernel's text, then against the real kernel in two
// namespaces of the test's own joined by a veth: frames of a protocol nothing receives
// count as receive drops, frames sent straight to the driver (as an AF_XDP socket
// sends, bypassing the qdisc) while the peer is down as transmit drops, each exactly.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "dataplane/kernel_interface_drops.h"
#include "tests/harness/netns.h"

namespace meshlane::testing {
namespace {

// /proc/net/dev as Linux 6.x prints it (net/core/net-procfs.c).
constexpr const char* kTable =
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n"
    "    lo:  764271 3575    0    0    0     0          0         0   764271    3575    0    0    0     0       0          0\n"
    "mlt-veth10: 1000 10 1 27 0 0 0 0 2000 20 0 5 0 0 0 0\n"
    "mlt-veth1: 18446744073709551615 4 0 3 0 0 0 0 600 6 0 9 0 0 0 0\n"
    "  short: 1 2 3\n";

TEST(KernelInterfaceDrops, TheReceiveAndTransmitDropColumnsOfTheNamedInterface) {
  const auto ten = parse_proc_net_dev(kTable, "mlt-veth10");
  ASSERT_TRUE(ten);
  EXPECT_EQ(ten->rx, 27u);
  EXPECT_EQ(ten->tx, 5u);
  // Not the line of another interface whose name it begins.
  const auto one = parse_proc_net_dev(kTable, "mlt-veth1");
  ASSERT_TRUE(one);
  EXPECT_EQ(one->rx, 3u);
  EXPECT_EQ(one->tx, 9u);
  EXPECT_TRUE(parse_proc_net_dev(kTable, "lo"));
  EXPECT_FALSE(parse_proc_net_dev(kTable, "mlt-veth")) << "a name's prefix is not the interface";
  EXPECT_FALSE(parse_proc_net_dev(kTable, "short")) << "a line with fewer than 16 numbers is not read";
  EXPECT_FALSE(parse_proc_net_dev(kTable, "face |bytes    packets errs drop fifo frame compressed multicast|bytes"));
  EXPECT_FALSE(parse_proc_net_dev("", "lo"));
  EXPECT_FALSE(parse_proc_net_dev("  eth0: 1 2 3 x 5 6 7 8 9 10 11 12 13 14 15 16\n", "eth0"));
}

struct fd_guard {
  int fd = -1;
  ~fd_guard() {
    if (fd >= 0) close(fd);
  }
};

// `count` 60-byte frames of EtherType 0x88b5 (IEEE's local experimental type: no
// protocol of the kernel takes it) out of `interface`, straight to its driver when
// `bypass_qdisc` (PACKET_QDISC_BYPASS: dev_direct_xmit, the path an AF_XDP socket's
// frames take in copy mode). The number the kernel accepted.
int send_frames(const std::string& interface, int count, bool bypass_qdisc) {
  fd_guard s;
  s.fd = socket(AF_PACKET, SOCK_RAW, 0);
  if (s.fd < 0) return -1;
  const int on = 1;
  if (bypass_qdisc && setsockopt(s.fd, SOL_PACKET, PACKET_QDISC_BYPASS, &on, sizeof on) != 0) return -1;
  sockaddr_ll to{};
  to.sll_family = AF_PACKET;
  to.sll_ifindex = static_cast<int>(if_nametoindex(interface.c_str()));
  to.sll_halen = ETH_ALEN;
  std::array<uint8_t, 60> frame{};
  std::memset(frame.data(), 0xff, 6);  // broadcast: every receiver takes it by address
  const uint8_t source[6] = {0x02, 0, 0, 0, 0, 0x42};
  std::memcpy(frame.data() + 6, source, 6);
  frame[12] = 0x88;
  frame[13] = 0xb5;
  std::memcpy(to.sll_addr, frame.data(), 6);
  int sent = 0;
  for (int i = 0; i < count; ++i)
    if (sendto(s.fd, frame.data(), frame.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to) ==
        static_cast<ssize_t>(frame.size()))
      ++sent;
  return sent;
}

kernel_interface_drops drops_of(const netns& ns, const std::string& interface) {
  netns_scope in(ns);
  const auto drops = read_kernel_interface_drops(interface);
  EXPECT_TRUE(drops) << interface << " not in its namespace's /proc/net/dev";
  return drops.value_or(kernel_interface_drops{});
}

TEST(KernelInterfaceDrops, TheKernelsOwnDropsOfAVethAreReadFromItsNamespace) {
  if (!running_as_root()) GTEST_SKIP() << "needs root: namespaces and veth";
  netns inside("kdin"), outside("kdout");
  // No IPv6 on either side: nothing of the kernel's own (router solicitations) on the link.
  for (netns* ns : {&inside, &outside})
    ASSERT_TRUE(ns->exec_or_fail("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1"));
  const veth_pair veth = make_veth("kd", &inside, "kx", &outside);
  ASSERT_TRUE(inside.exec_or_fail("ip link set " + veth.a + " up"));
  ASSERT_TRUE(outside.exec_or_fail("ip link set " + veth.b + " up"));
  {
    // The namespace is the calling thread's: the inside end is not in the test's own.
    EXPECT_FALSE(read_kernel_interface_drops(veth.a)) << "read outside its namespace";
  }

  // Receive: frames nobody takes are dropped by the inside end's stack and counted there.
  const kernel_interface_drops before = drops_of(inside, veth.a);
  {
    netns_scope out(outside);
    ASSERT_EQ(send_frames(veth.b, 25, false), 25);
  }
  kernel_interface_drops after{};
  for (int i = 0; i < 50; ++i) {  // the veth delivers in its peer's softirq: at once, but allow it
    after = drops_of(inside, veth.a);
    if (after.rx - before.rx >= 25) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(after.rx - before.rx, 25u);
  EXPECT_EQ(after.tx - before.tx, 0u);

  // Transmit: with the peer down, frames handed straight to the driver are dropped and
  // counted as the sender's transmit drops (what a veth does to an AF_XDP socket's frames
  // its peer cannot take).
  ASSERT_TRUE(outside.exec_or_fail("ip link set " + veth.b + " down"));
  {
    netns_scope in(inside);
    // sendto may report the drop (ENOBUFS) or not: the interface counts each frame either way.
    send_frames(veth.a, 7, true);
  }
  const kernel_interface_drops down = drops_of(inside, veth.a);
  EXPECT_EQ(down.tx - after.tx, 7u);
  EXPECT_EQ(down.rx - after.rx, 0u);
}

}  // namespace
}  // namespace meshlane::testing
