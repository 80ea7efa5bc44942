#include "dataplane/kernel_ingress.h"

#include <ifaddrs.h>
#include <linux/bpf.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

namespace meshlane {
namespace {

// Linux 6.6's attach type for tcx ingress links, absent from older uapi headers (Debian
// 12's are 6.1).
constexpr uint32_t kTcxIngress = 46;
constexpr int32_t kTcActShot = 2;

long bpf_call(int command, bpf_attr& attr) { return syscall(__NR_bpf, command, &attr, sizeof attr); }

// The drop program's descriptor, loaded at the first use (-1 with `error` when refused).
int drop_program(std::string& error) {
  static std::once_flag once;
  static int fd = -1;
  static std::string load_error;
  std::call_once(once, [] {
    const bpf_insn program[] = {
        {BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, kTcActShot},  // r0 = TC_ACT_SHOT
        {BPF_JMP | BPF_EXIT, 0, 0, 0, 0},                           // return r0
    };
    static const char license[] = "GPL";
    bpf_attr attr;
    std::memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_SCHED_CLS;
    attr.insns = reinterpret_cast<uint64_t>(program);
    attr.insn_cnt = sizeof program / sizeof program[0];
    attr.license = reinterpret_cast<uint64_t>(license);
    std::strncpy(attr.prog_name, "ml_kernel_drop", sizeof attr.prog_name - 1);
    fd = static_cast<int>(bpf_call(BPF_PROG_LOAD, attr));
    if (fd < 0) load_error = std::string("loading the drop program: ") + std::strerror(errno);
  });
  if (fd < 0) error = load_error;
  return fd;
}

}  // namespace

kernel_ingress_drop::~kernel_ingress_drop() {
  if (fd_ >= 0) close(fd_);
}

std::shared_ptr<const kernel_ingress_drop> drop_kernel_ingress(const std::string& interface, std::string& why) {
  const unsigned ifindex = if_nametoindex(interface.c_str());
  if (ifindex == 0) {
    why = "no interface " + interface;
    return nullptr;
  }
  const int program = drop_program(why);
  if (program < 0) return nullptr;
  bpf_attr attr;
  std::memset(&attr, 0, sizeof attr);
  attr.link_create.prog_fd = static_cast<uint32_t>(program);
  attr.link_create.target_fd = ifindex;  // target_ifindex: the same field
  attr.link_create.attach_type = kTcxIngress;
  const int link = static_cast<int>(bpf_call(BPF_LINK_CREATE, attr));
  if (link < 0) {
    const int err = errno;
    why = "attaching a tcx ingress link to " + interface + ": " + std::strerror(err) +
          (err == EINVAL ? " (tcx needs Linux 6.6)" : "");
    return nullptr;
  }
  return std::make_shared<const kernel_ingress_drop>(link);
}

bool kernel_has_address_on(const std::string& interface) {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return true;  // unknown: keep the kernel's receive path
  bool found = false;
  for (const ifaddrs* a = list; a && !found; a = a->ifa_next) {
    if (!a->ifa_addr || !a->ifa_name || interface != a->ifa_name) continue;
    if (a->ifa_addr->sa_family == AF_INET) found = true;
    if (a->ifa_addr->sa_family == AF_INET6) {
      const auto* v6 = reinterpret_cast<const sockaddr_in6*>(a->ifa_addr);
      if (!IN6_IS_ADDR_LINKLOCAL(&v6->sin6_addr)) found = true;
    }
  }
  freeifaddrs(list);
  return found;
}

}  // namespace meshlane
