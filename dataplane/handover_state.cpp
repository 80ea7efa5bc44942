// The hand-over file's codec and its atomic write (layout in handover_state.h).
#include "dataplane/handover_state.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

namespace meshlane {

namespace {

constexpr char kMagic[8] = {'M', 'L', 'H', 'A', 'N', 'D', 'O', 'V'};
constexpr size_t kDigestBytes = 32;
constexpr size_t kHeaderBytes = sizeof kMagic + 4 + 4 + 8 + kDigestBytes;
// The smallest record of each kind, for bounding counts by the bytes left.
constexpr size_t kFlowMinBytes =
    2 + 4 + 16 + 16 + 2 + 2 + 1 + 16 + 2 + 2 + 4 + 6 + 1 + 1 + 1 + 2 + 2 + 2;
constexpr size_t kLentBytes = 2 + 16 + 2;
constexpr size_t kUnderlayBytes = 4 + 6;
constexpr size_t kPodMinBytes = 2 + 6;
constexpr size_t kPolicyRecordBytes = 2 + 4 + 16 + 16 + 2 + 2 + 1 + 1;

std::array<uint8_t, kDigestBytes> sha256(const uint8_t* data, size_t size) {
  std::array<uint8_t, kDigestBytes> digest{};
  unsigned int length = 0;
  EVP_Digest(data, size, digest.data(), &length, EVP_sha256(), nullptr);
  return digest;
}

struct writer {
  std::vector<uint8_t> out;
  void bytes(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  }
  void u8(uint8_t v) { out.push_back(v); }
  void u16(uint16_t v) { u8(static_cast<uint8_t>(v)), u8(static_cast<uint8_t>(v >> 8)); }
  void u32(uint32_t v) { u16(static_cast<uint16_t>(v)), u16(static_cast<uint16_t>(v >> 16)); }
  void u64(uint64_t v) { u32(static_cast<uint32_t>(v)), u32(static_cast<uint32_t>(v >> 32)); }
  void str(const std::string& s) {
    const size_t n = std::min<size_t>(s.size(), UINT16_MAX);
    u16(static_cast<uint16_t>(n));
    bytes(s.data(), n);
  }
};

struct reader {
  const uint8_t* p;
  size_t left;
  bool ok = true;
  bool take(void* to, size_t n) {
    if (!ok || left < n) return ok = false;
    std::memcpy(to, p, n);
    p += n, left -= n;
    return true;
  }
  uint8_t u8() {
    uint8_t v = 0;
    take(&v, 1);
    return v;
  }
  uint16_t u16() {
    const uint16_t low = u8();
    return static_cast<uint16_t>(low | u8() << 8);
  }
  uint32_t u32() {
    const uint32_t low = u16();
    return low | uint32_t{u16()} << 16;
  }
  uint64_t u64() {
    const uint64_t low = u32();
    return low | uint64_t{u32()} << 32;
  }
  std::string str() {
    const uint16_t n = u16();
    if (!ok || left < n) {
      ok = false;
      return {};
    }
    std::string s(reinterpret_cast<const char*>(p), n);
    p += n, left -= n;
    return s;
  }
  // A record count, refused when its records could not fit in what is left.
  bool count(uint32_t& n, size_t min_bytes) {
    n = u32();
    return ok && uint64_t{n} * min_bytes <= left;
  }
};

}  // namespace

uint64_t unix_ms_now() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

std::vector<uint8_t> serialize_handover_state(const handover_state& state) {
  writer body;
  body.str(state.document_digest);
  body.u64(state.written_unix_ms);
  body.u16(state.workers);
  body.u32(static_cast<uint32_t>(state.flows.size()));
  for (const handover_flow& f : state.flows) {
    const flow_entry& e = f.entry;
    body.u16(f.worker);
    body.u32(f.remaining_ms);
    body.bytes(e.key.source, 16);
    body.bytes(e.key.destination, 16);
    body.u16(e.key.source_port);
    body.u16(e.key.destination_port);
    body.u8(e.key.protocol);
    body.bytes(e.rewrite_address, 16);
    body.u16(e.rewrite_port);
    body.u16(e.second_port);
    body.bytes(&e.second_address, 4);
    body.bytes(e.last_hop_mac, 6);
    body.u8(static_cast<uint8_t>(e.direction));
    body.u8(static_cast<uint8_t>(e.state));
    body.u8(e.flags);
    body.u16(e.l3_checksum_delta);
    body.u16(e.l4_checksum_delta);
    body.str(f.backend);
  }
  body.u32(static_cast<uint32_t>(state.lent_ports.size()));
  for (const handover_lent_port& l : state.lent_ports) {
    body.u16(l.port);
    body.bytes(l.client.data(), 16);
    body.u16(l.client_port);
  }
  body.u32(static_cast<uint32_t>(state.underlay_neighbours.size()));
  for (const handover_underlay_neighbour& n : state.underlay_neighbours) {
    body.bytes(&n.ip, 4);
    body.bytes(n.mac.data(), 6);
  }
  body.u32(static_cast<uint32_t>(state.pod_neighbours.size()));
  for (const handover_pod_neighbour& n : state.pod_neighbours) {
    body.str(n.interface);
    body.bytes(n.mac.data(), 6);
  }
  // Only when there are records: one form for each state (the reader refuses an empty
  // section), and a file without records is what an earlier writer wrote.
  if (!state.policy_records.empty()) body.u32(static_cast<uint32_t>(state.policy_records.size()));
  for (const handover_policy_record& p : state.policy_records) {
    body.u16(p.worker);
    body.u32(p.remaining_ms);
    body.bytes(p.key.source, 16);
    body.bytes(p.key.destination, 16);
    body.u16(p.key.source_port);
    body.u16(p.key.destination_port);
    body.u8(p.key.protocol);
    body.u8(static_cast<uint8_t>(p.state));
  }
  writer file;
  file.bytes(kMagic, sizeof kMagic);
  file.u32(kHandoverFormatVersion);
  file.u32(0);
  file.u64(body.out.size());
  const auto digest = sha256(body.out.data(), body.out.size());
  file.bytes(digest.data(), digest.size());
  file.bytes(body.out.data(), body.out.size());
  return std::move(file.out);
}

bool parse_handover_state(const uint8_t* data, size_t size, handover_state& out,
                          std::string& error) {
  out = handover_state{};
  if (size < kHeaderBytes || std::memcmp(data, kMagic, sizeof kMagic) != 0) {
    error = "not a meshlane hand-over file (no MLHANDOV header)";
    return false;
  }
  reader header{data + sizeof kMagic, kHeaderBytes - sizeof kMagic};
  const uint32_t version = header.u32();
  const uint32_t reserved = header.u32();
  const uint64_t body_length = header.u64();
  if (version != kHandoverFormatVersion) {
    error = "format version " + std::to_string(version) + ", this agent reads version " +
            std::to_string(kHandoverFormatVersion);
    return false;
  }
  // Outside the checksum: a version 1 file has zero there, anything else is damage.
  if (reserved != 0) {
    error = "damaged header (reserved field " + std::to_string(reserved) + ", not 0)";
    return false;
  }
  if (body_length != size - kHeaderBytes) {
    error = "truncated or padded: the header gives " + std::to_string(body_length) +
            " bytes of body, the file holds " + std::to_string(size - kHeaderBytes);
    return false;
  }
  const uint8_t* body = data + kHeaderBytes;
  if (sha256(body, body_length) != [&] {
        std::array<uint8_t, kDigestBytes> stored{};
        std::memcpy(stored.data(), data + kHeaderBytes - kDigestBytes, kDigestBytes);
        return stored;
      }()) {
    error = "checksum mismatch (the SHA-256 of the body is not the one written)";
    return false;
  }
  reader r{body, body_length};
  out.document_digest = r.str();
  out.written_unix_ms = r.u64();
  out.workers = r.u16();
  if (r.ok && out.workers == 0) {
    error = "zero workers";
    return false;
  }
  uint32_t n = 0;
  if (!r.count(n, kFlowMinBytes)) {
    error = "flow count beyond the file";
    return false;
  }
  out.flows.resize(n);
  for (handover_flow& f : out.flows) {
    flow_entry& e = f.entry;
    f.worker = r.u16();
    f.remaining_ms = r.u32();
    r.take(e.key.source, 16);
    r.take(e.key.destination, 16);
    e.key.source_port = r.u16();
    e.key.destination_port = r.u16();
    e.key.protocol = r.u8();
    e.protocol = e.key.protocol;
    r.take(e.rewrite_address, 16);
    e.rewrite_port = r.u16();
    e.second_port = r.u16();
    r.take(&e.second_address, 4);
    r.take(e.last_hop_mac, 6);
    const uint8_t direction = r.u8(), state = r.u8();
    e.flags = r.u8();
    e.l3_checksum_delta = r.u16();
    e.l4_checksum_delta = r.u16();
    f.backend = r.str();
    if (!r.ok) break;
    // Egress flows (issue 18) may be ICMP echoes; their key's mark (egress_snat.h) is
    // implied by the flag and put back by the adopter.
    const bool echo = e.key.protocol == wire::kProtoIcmp || e.key.protocol == wire::kProtoIcmpv6;
    if (f.worker >= out.workers || direction > 1 || state > 2 ||
        (e.key.protocol != wire::kProtoTcp && e.key.protocol != wire::kProtoUdp &&
         !(echo && (e.flags & kFlowEgress))) ||
        (e.flags & ~(kFlowSecondRewrite | kFlowToLastHop | kFlowIngress | kFlowEgress | kFlowClientPort))) {
      error = "flow record " + std::to_string(&f - out.flows.data()) +
              " is malformed (worker, direction, state, protocol or flags out of range)";
      return false;
    }
    e.direction = static_cast<flow_direction>(direction);
    e.state = static_cast<flow_state>(state);
  }
  if (r.ok && !r.count(n, kLentBytes)) {
    error = "lent port count beyond the file";
    return false;
  }
  if (r.ok) out.lent_ports.resize(n);
  for (handover_lent_port& l : out.lent_ports) {
    l.port = r.u16();
    r.take(l.client.data(), 16);
    l.client_port = r.u16();
  }
  if (r.ok && !r.count(n, kUnderlayBytes)) {
    error = "neighbour count beyond the file";
    return false;
  }
  if (r.ok) out.underlay_neighbours.resize(n);
  for (handover_underlay_neighbour& u : out.underlay_neighbours) {
    r.take(&u.ip, 4);
    r.take(u.mac.data(), 6);
  }
  if (r.ok && !r.count(n, kPodMinBytes)) {
    error = "pod neighbour count beyond the file";
    return false;
  }
  if (r.ok) out.pod_neighbours.resize(n);
  for (handover_pod_neighbour& p : out.pod_neighbours) {
    p.interface = r.str();
    r.take(p.mac.data(), 6);
  }
  // The policy records came later: a file that ends before them has none.
  if (r.ok && r.left > 0) {
    if (!r.count(n, kPolicyRecordBytes) && r.ok) {
      error = "policy record count beyond the file";
      return false;
    }
    if (r.ok && n == 0) {
      error = "an empty policy record section (a writer leaves it out)";
      return false;
    }
    if (r.ok) out.policy_records.resize(n);
    for (handover_policy_record& p : out.policy_records) {
      p.worker = r.u16();
      p.remaining_ms = r.u32();
      r.take(p.key.source, 16);
      r.take(p.key.destination, 16);
      p.key.source_port = r.u16();
      p.key.destination_port = r.u16();
      p.key.protocol = r.u8();
      const uint8_t tcp_state = r.u8();
      if (tcp_state > static_cast<uint8_t>(flow_state::closing)) {
        error = "policy record with TCP state " + std::to_string(tcp_state);
        return false;
      }
      p.state = static_cast<flow_state>(tcp_state);
    }
  }
  if (!r.ok) {
    error = "truncated record";
    return false;
  }
  if (r.left != 0) {
    error = std::to_string(r.left) + " bytes after the last record";
    return false;
  }
  return true;
}

std::string write_handover_file(const std::string& path, const handover_state& state) {
  const std::vector<uint8_t> bytes = serialize_handover_state(state);
  std::error_code ignored;
  const std::filesystem::path target(path);
  if (target.has_parent_path()) std::filesystem::create_directories(target.parent_path(), ignored);
  const std::string temporary = path + ".tmp." + std::to_string(getpid());
  const int fd = open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return temporary + ": " + std::strerror(errno);
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    written += static_cast<size_t>(n);
  }
  const bool complete = written == bytes.size() && fsync(fd) == 0;
  const int saved = errno;
  close(fd);
  if (!complete || rename(temporary.c_str(), path.c_str()) != 0) {
    const std::string error = path + ": " + std::strerror(complete ? errno : saved);
    unlink(temporary.c_str());
    return error;
  }
  return {};
}

handover_read read_handover_file(const std::string& path, handover_state& out, std::string& error) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return handover_read::absent;
    error = std::strerror(errno);
    return handover_read::invalid;
  }
  std::vector<uint8_t> bytes;
  uint8_t buffer[65536];
  for (ssize_t n; (n = read(fd, buffer, sizeof buffer)) != 0;) {
    if (n < 0) {
      if (errno == EINTR) continue;
      error = std::strerror(errno);
      close(fd);
      return handover_read::invalid;
    }
    bytes.insert(bytes.end(), buffer, buffer + n);
  }
  close(fd);
  return parse_handover_state(bytes.data(), bytes.size(), out, error) ? handover_read::ok
                                                                      : handover_read::invalid;
}

}  // namespace meshlane
