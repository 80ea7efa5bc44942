// The kernel's stack kept off a port's frames (dataplane/kernel_ingress.h), against the
// real kernel: two namespaces of the test's own joined by a veth; a UDP socket on one
// end's address and a packet socket bound to that end (what the af_packet port is). With
// the drop attached the packet socket still sees every frame and the UDP socket nothing;
// with the drop let go, the kernel receives again.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "dataplane/kernel_ingress.h"
#include "tests/harness/netns.h"

namespace meshlane::testing {
namespace {

struct fd_guard {
  int fd = -1;
  ~fd_guard() {
    if (fd >= 0) close(fd);
  }
};

bool readable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, timeout_ms) == 1;
}

// Datagrams with `marker` read from a packet socket until none comes for `timeout_ms`.
int frames_with(int packet_socket, const std::string& marker, int timeout_ms) {
  int found = 0;
  char frame[2048];
  while (readable(packet_socket, timeout_ms)) {
    const ssize_t n = recv(packet_socket, frame, sizeof frame, 0);
    if (n > 0 && std::string(frame, static_cast<size_t>(n)).find(marker) != std::string::npos) ++found;
  }
  return found;
}

TEST(KernelIngress, ThePortsPacketSocketSeesEveryFrameAndTheKernelsStackNoneUntilTheDropGoes) {
  if (!running_as_root()) GTEST_SKIP() << "needs root: namespaces, veth and BPF links";
  netns inside("kin"), outside("kout");
  inside.exec_or_fail("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1");
  const veth_pair veth = make_veth("ki", &inside, "ko", &outside);
  ASSERT_TRUE(inside.exec_or_fail("ip link set " + veth.a + " up"));
  ASSERT_TRUE(outside.exec_or_fail("ip link set " + veth.b + " up && ip addr add 192.0.2.2/24 dev " + veth.b));

  // No address yet: nothing the kernel would need the frames for (link-local IPv6 is off
  // here; the uplink rule reads addresses only).
  {
    netns_scope in(inside);
    EXPECT_FALSE(kernel_has_address_on(veth.a));
  }
  ASSERT_TRUE(inside.exec_or_fail("ip addr add 192.0.2.1/24 dev " + veth.a));
  // The frames reach the inside end by its MAC with no ARP (which the drop would take too).
  const std::string mac = inside.exec("cat /sys/class/net/" + veth.a + "/address").output.substr(0, 17);
  ASSERT_TRUE(outside.exec_or_fail("ip neigh replace 192.0.2.1 lladdr " + mac + " dev " + veth.b + " nud permanent"));

  fd_guard udp, packets;
  std::shared_ptr<const kernel_ingress_drop> drop;
  {
    netns_scope in(inside);
    EXPECT_TRUE(kernel_has_address_on(veth.a));
    udp.fd = socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(9000);
    address.sin_addr.s_addr = inet_addr("192.0.2.1");
    ASSERT_EQ(bind(udp.fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0) << std::strerror(errno);
    packets.fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    sockaddr_ll link{};
    link.sll_family = AF_PACKET;
    link.sll_protocol = htons(ETH_P_ALL);
    link.sll_ifindex = static_cast<int>(if_nametoindex(veth.a.c_str()));
    ASSERT_EQ(bind(packets.fd, reinterpret_cast<sockaddr*>(&link), sizeof link), 0) << std::strerror(errno);
  }
  const auto send_from_outside = [&](const std::string& marker) {
    netns_scope out(outside);
    fd_guard sender;
    sender.fd = socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(9000);
    to.sin_addr.s_addr = inet_addr("192.0.2.1");
    for (int i = 0; i < 5; ++i)
      if (sendto(sender.fd, marker.data(), marker.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to) < 0)
        return false;
    return true;
  };
  const auto datagrams = [&](int timeout_ms) {
    int n = 0;
    char buffer[256];
    while (readable(udp.fd, timeout_ms) && recv(udp.fd, buffer, sizeof buffer, 0) > 0) ++n;
    return n;
  };

  ASSERT_TRUE(send_from_outside("before-drop"));
  EXPECT_EQ(datagrams(500), 5) << "the kernel's stack receives without the drop";
  EXPECT_EQ(frames_with(packets.fd, "before-drop", 200), 5);

  {
    netns_scope in(inside);
    std::string why;
    drop = drop_kernel_ingress(veth.a, why);
    ASSERT_TRUE(drop) << why;
    EXPECT_FALSE(drop_kernel_ingress("mltnosuchif", why));
    EXPECT_NE(why.find("no interface"), std::string::npos) << why;
  }
  ASSERT_TRUE(send_from_outside("with-drop"));
  EXPECT_EQ(frames_with(packets.fd, "with-drop", 300), 5) << "the port's socket must still see every frame";
  EXPECT_EQ(datagrams(300), 0) << "the kernel's stack received frames past the drop";

  drop.reset();  // the link's descriptor closed: detached
  ASSERT_TRUE(send_from_outside("after-drop"));
  EXPECT_EQ(datagrams(500), 5) << "the kernel receives again once the drop is let go";
  EXPECT_EQ(frames_with(packets.fd, "after-drop", 200), 5);
}

}  // namespace
}  // namespace meshlane::testing
