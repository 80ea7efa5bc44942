// The harness itself: what it makes works, and nothing of it is left after teardown.
#include "tests/harness/netns.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

namespace meshlane::testing {
namespace {

TEST(Harness, TwoNamespacesTalkTcpOverAVethAndVanishAfterwards) {
  MESHLANE_REQUIRE_ROOT();
  std::string ns_names, link_name;
  {
    netns a("a"), b("b");
    ns_names = a.name() + " " + b.name();
    const veth_pair link = make_veth("-a", &a, "-b", &b);
    link_name = link.a;
    ASSERT_TRUE(a.exec_or_fail("ip addr add 198.19.0.1/24 dev " + link.a + " && ip link set " + link.a + " up"));
    ASSERT_TRUE(b.exec_or_fail("ip addr add 198.19.0.2/24 dev " + link.b + " && ip link set " + link.b + " up"));

    int listener;
    {
      netns_scope in_b(b);
      listener = socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in address{};
      address.sin_family = AF_INET;
      address.sin_port = htons(7000);
      address.sin_addr.s_addr = htonl(INADDR_ANY);
      ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
      ASSERT_EQ(listen(listener, 1), 0);
    }
    int client;
    {
      netns_scope in_a(a);
      client = socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in address{};
      address.sin_family = AF_INET;
      address.sin_port = htons(7000);
      inet_pton(AF_INET, "198.19.0.2", &address.sin_addr);
      ASSERT_EQ(connect(client, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    }
    const int server = accept(listener, nullptr, nullptr);
    ASSERT_GE(server, 0);
    ASSERT_EQ(write(client, "ping", 4), 4);
    char buffer[4];
    ASSERT_EQ(read(server, buffer, 4), 4);
    EXPECT_EQ(std::string(buffer, 4), "ping");
    close(server), close(client), close(listener);
  }
  const auto namespaces = run_command("ip netns list").output;
  EXPECT_EQ(namespaces.find(test_prefix()), std::string::npos) << namespaces;
  EXPECT_NE(run_command("ip link show " + link_name).exit_code, 0);
}

TEST(Harness, CgroupHoldsAChildAndIsRemoved) {
  MESHLANE_REQUIRE_ROOT();
  std::string path;
  {
    test_cgroup cgroup("harness");
    path = cgroup.path();
    ASSERT_FALSE(path.empty());
    child_process sleeper({"sleep", "30"}, nullptr, &cgroup);
    // The child writes itself into the cgroup before exec; give it a moment.
    for (int i = 0; i < 100 && run_command("cat " + path + "/cgroup.procs").output.empty(); ++i)
      usleep(10000);
    EXPECT_NE(run_command("cat " + path + "/cgroup.procs").output.find(std::to_string(sleeper.pid())),
              std::string::npos);
    EXPECT_EQ(sleeper.stop(), 128 + 15);
  }
  struct stat st;
  EXPECT_NE(stat(path.c_str(), &st), 0) << path << " still exists";
}

}  // namespace
}  // namespace meshlane::testing
