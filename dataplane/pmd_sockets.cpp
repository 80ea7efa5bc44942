#include "dataplane/pmd_sockets.h"

#include <dirent.h>
#include <linux/if_packet.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdlib>
#include <iterator>

namespace meshlane {

std::vector<int> process_sockets(int family) {
  std::vector<int> found;
  DIR* fds = opendir("/proc/self/fd");
  if (!fds) return found;
  while (const dirent* entry = readdir(fds)) {
    char* end = nullptr;
    const long fd = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0' || fd == dirfd(fds)) continue;
    int domain = 0;
    socklen_t length = sizeof domain;
    if (getsockopt(int(fd), SOL_SOCKET, SO_DOMAIN, &domain, &length) == 0 && domain == family) found.push_back(int(fd));
  }
  closedir(fds);
  std::sort(found.begin(), found.end());
  return found;
}

std::vector<int> af_packet_pmd_sockets(int ifindex) {
  std::vector<int> found;
  for (const int fd : process_sockets(AF_PACKET)) {
    sockaddr_ll bound{};
    socklen_t length = sizeof bound;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length) == 0 && bound.sll_ifindex == ifindex)
      found.push_back(fd);
  }
  return found;
}

std::vector<int> opened_between(const std::vector<int>& before, const std::vector<int>& after) {
  std::vector<int> opened;
  std::set_difference(after.begin(), after.end(), before.begin(), before.end(), std::back_inserter(opened));
  return opened;
}

bool socket_busy_polls(int fd) {
  int value = 0;
  socklen_t length = sizeof value;
  if (getsockopt(fd, SOL_SOCKET, SO_BUSY_POLL, &value, &length) == 0 && value > 0) return true;
  value = 0;
  length = sizeof value;
  return getsockopt(fd, SOL_SOCKET, SO_PREFER_BUSY_POLL, &value, &length) == 0 && value != 0;
}

}  // namespace meshlane
