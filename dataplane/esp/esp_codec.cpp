// The ESP packet path over plain buffers (esp.h): encapsulation and decapsulation of one
// frame, and the AES-GCM seal and open of one packet with its SA's keyed engine.
#include <openssl/crypto.h>
#include <openssl/evp.h>

#ifdef MESHLANE_HAVE_IPSEC_MB
#include <intel-ipsec-mb.h>
#endif

#include <cstring>

#include "dataplane/esp/esp.h"

namespace meshlane {

using namespace wire;

namespace {

// RFC 4106 section 5, with extended sequence numbers: SPI | high 32 bits | low 32 bits.
constexpr uint32_t kAadSize = 12;
inline void make_aad(uint8_t* aad, uint32_t spi, uint64_t sequence) {
  store_be32(aad, spi);
  store_be32(aad + 4, static_cast<uint32_t>(sequence >> 32));
  store_be32(aad + 8, static_cast<uint32_t>(sequence));
}

// The smallest ESP payload after the IV: padding to 4 bytes of pad length and next header.
constexpr uint32_t kMinEncrypted = 4;

// Moves the Ethernet and IPv4 headers (`length` bytes) over or out of the ESP front. Of a
// constant length, as every frame without IPv4 options has, the move is a few loads and
// stores in line instead of a call (5% of a round trip with intel-ipsec-mb).
inline void move_headers(uint8_t* to, const uint8_t* from, uint32_t length) {
  constexpr uint32_t kPlain = sizeof(ethernet_header) + sizeof(ipv4_header);
  if (length == kPlain) {
    uint8_t headers[kPlain];  // all loaded before any store: the two ranges overlap
    std::memcpy(headers, from, kPlain);
    std::memcpy(to, headers, kPlain);
  } else {
    std::memmove(to, from, length);
  }
}

}  // namespace

// intel-ipsec-mb's direct API in one call per packet (its per-message state on the stack).
// It reports only parameter errors (null pointers, zero lengths), which these calls never
// make; an ICV is compared in constant time, as OpenSSL does.
bool esp_cipher_context::seal(const uint8_t* iv, const uint8_t* aad, uint32_t aad_length,
                              uint8_t* data, uint32_t length, uint8_t* icv) {
  std::memcpy(nonce_.data() + kEspSaltSize, iv, kEspIvSize);
#ifdef MESHLANE_HAVE_IPSEC_MB
  if (engine_ == esp_engine::ipsec_mb) {
    alignas(64) gcm_context_data state;
    if (key_length_ == 16)
      IMB_AES128_GCM_ENC(manager_, key_data_, &state, data, data, length, nonce_.data(), aad,
                         aad_length, icv, kEspIcvSize);
    else
      IMB_AES256_GCM_ENC(manager_, key_data_, &state, data, data, length, nonce_.data(), aad,
                         aad_length, icv, kEspIcvSize);
    return true;
  }
#endif
  int written = 0, last = 0;
  return EVP_EncryptInit_ex(context_, nullptr, nullptr, nullptr, nonce_.data()) == 1 &&
         EVP_EncryptUpdate(context_, nullptr, &written, aad, static_cast<int>(aad_length)) == 1 &&
         EVP_EncryptUpdate(context_, data, &written, data, static_cast<int>(length)) == 1 &&
         EVP_EncryptFinal_ex(context_, data + written, &last) == 1 &&
         EVP_CIPHER_CTX_ctrl(context_, EVP_CTRL_AEAD_GET_TAG, kEspIcvSize, icv) == 1;
}

bool esp_cipher_context::open(const uint8_t* iv, const uint8_t* aad, uint32_t aad_length,
                              uint8_t* data, uint32_t length, const uint8_t* icv) {
  std::memcpy(nonce_.data() + kEspSaltSize, iv, kEspIvSize);
#ifdef MESHLANE_HAVE_IPSEC_MB
  if (engine_ == esp_engine::ipsec_mb) {
    alignas(64) gcm_context_data state;
    uint8_t computed[kEspIcvSize];
    if (key_length_ == 16)
      IMB_AES128_GCM_DEC(manager_, key_data_, &state, data, data, length, nonce_.data(), aad,
                         aad_length, computed, kEspIcvSize);
    else
      IMB_AES256_GCM_DEC(manager_, key_data_, &state, data, data, length, nonce_.data(), aad,
                         aad_length, computed, kEspIcvSize);
    return CRYPTO_memcmp(computed, icv, kEspIcvSize) == 0;
  }
#endif
  int written = 0, last = 0;
  // OpenSSL takes the expected tag through a non-const pointer but only copies it.
  return EVP_DecryptInit_ex(context_, nullptr, nullptr, nullptr, nonce_.data()) == 1 &&
         EVP_DecryptUpdate(context_, nullptr, &written, aad, static_cast<int>(aad_length)) == 1 &&
         EVP_DecryptUpdate(context_, data, &written, data, static_cast<int>(length)) == 1 &&
         EVP_CIPHER_CTX_ctrl(context_, EVP_CTRL_AEAD_SET_TAG, kEspIcvSize,
                             const_cast<uint8_t*>(icv)) == 1 &&
         EVP_DecryptFinal_ex(context_, data + written, &last) == 1;
}

esp_encap_result esp_encapsulate_frame(outbound_sa& sa, esp_frame& f) {
  if (!sa.cipher.keyed()) return esp_encap_result::no_sa;
  constexpr uint32_t l3 = sizeof(ethernet_header);
  if (f.length < l3 + sizeof(ipv4_header) + sizeof(udp_header)) return esp_encap_result::malformed;
  uint8_t* frame = f.data;
  if (reinterpret_cast<const ethernet_header*>(frame)->ether_type != to_net16(kEtherTypeIpv4))
    return esp_encap_result::malformed;
  const auto* ip = reinterpret_cast<const ipv4_header*>(frame + l3);
  const uint32_t ip_header = (ip->version_ihl & 0xf) * 4u;
  const uint32_t total = from_net16(ip->total_length);
  const uint32_t l4 = l3 + ip_header;
  // One whole UDP datagram: not a fragment, its length the IP payload's.
  if ((ip->version_ihl >> 4) != 4 || ip_header < sizeof(ipv4_header) || ip->protocol != kProtoUdp ||
      total < ip_header + sizeof(udp_header) || l3 + total > f.length ||
      (from_net16(ip->flags_fragment) & (kIpv4MoreFragments | kIpv4FragmentOffsetMask)) ||
      load_be16(frame + l4 + offsetof(udp_header, length)) != total - ip_header)
    return esp_encap_result::malformed;
  if (ip->destination != sa.peer_ip) return esp_encap_result::wrong_peer;
  const uint32_t datagram = total - ip_header;
  // RFC 4303 section 2.4: the ciphertext (payload, padding, pad length, next header)
  // ends on a 4-byte boundary; GCM itself needs no block padding.
  const uint32_t padding = (0u - (datagram + 2)) & 3;
  const uint32_t encrypted = datagram + padding + 2;
  const uint32_t new_total = total + kEspFrontSize + padding + 2 + kEspIcvSize;
  if (new_total > 0xffff) return esp_encap_result::malformed;
  if (f.headroom < kEspFrontSize) return esp_encap_result::no_headroom;
  // Where the ICV ends, from the frame's start as it is now (Ethernet padding after the IP
  // packet, if any, is overwritten).
  const uint32_t new_end = l3 + total + padding + 2 + kEspIcvSize;
  if (new_end > f.length + f.tailroom) return esp_encap_result::no_tailroom;
  const uint64_t sequence = sa.next_sequence;
  if (sequence == 0) return esp_encap_result::sequence_exhausted;

  // Committed: from here the sequence number is spent, whatever happens (an IV is never
  // used twice, even for a packet that failed).
  sa.next_sequence = sequence + 1;
  if (sequence >= sa.rotate_after && !sa.exhausted.load(std::memory_order_relaxed))
    sa.exhausted.store(true, std::memory_order_relaxed);
  // The Ethernet and IPv4 headers move to the front; the datagram stays and is encrypted
  // where it is.
  uint8_t* start = frame - kEspFrontSize;
  move_headers(start, frame, l4);
  auto* new_ip = reinterpret_cast<ipv4_header*>(start + l3);
  const uint16_t old_total_length = new_ip->total_length;
  new_ip->total_length = to_net16(static_cast<uint16_t>(new_total));
  new_ip->checksum = checksum_update16(new_ip->checksum, old_total_length, new_ip->total_length);
  const uint16_t port = to_net16(kEspUdpPort);
  const udp_header udp{port, port, to_net16(static_cast<uint16_t>(new_total - ip_header)), 0};
  std::memcpy(start + l4, &udp, sizeof udp);
  uint8_t* esp = start + l4 + sizeof(udp_header);
  store_be32(esp, sa.spi);
  store_be32(esp + 4, static_cast<uint32_t>(sequence));
  // RFC 4106 section 3.1: the IV must not repeat under a key; the sequence number never does.
  store_be64(esp + kEspHeaderSize, sequence);
  uint8_t* payload = esp + kEspHeaderSize + kEspIvSize;
  uint8_t* trailer = payload + datagram;
  for (uint32_t i = 0; i < padding; ++i)
    trailer[i] = static_cast<uint8_t>(i + 1);  // RFC 4303 section 2.4
  trailer[padding] = static_cast<uint8_t>(padding);
  trailer[padding + 1] = kProtoUdp;
  uint8_t aad[kAadSize];
  make_aad(aad, sa.spi, sequence);
  if (!sa.cipher.seal(esp + kEspHeaderSize, aad, kAadSize, payload, encrypted, payload + encrypted))
    return esp_encap_result::cipher_failed;

  f.tailroom = f.length + f.tailroom - new_end;
  f.data = start;
  f.length = kEspFrontSize + new_end;
  f.headroom -= kEspFrontSize;
  sa.packets.add(1);
  sa.bytes.add(datagram);
  return esp_encap_result::ok;
}

namespace {
// The checks before the SA lookup: IPv4 / UDP, the lengths, not a keepalive or marker.
// Sets `esp_length`.
inline esp_result check_esp_frame(const esp_frame& f, const parsed_packet& outer, uint32_t& esp_length) {
  if (outer.l3 != l3_kind::ipv4 || outer.l4_protocol != kProtoUdp || outer.l4_offset == 0)
    return esp_result::malformed;
  const uint32_t l3 = outer.l3_offset, l4 = outer.l4_offset, end = l3 + outer.l3_length;
  if (l4 < l3 + sizeof(ipv4_header) || end > f.length || end < l4 + sizeof(udp_header))
    return esp_result::malformed;
  const uint8_t* frame = f.data;
  const uint32_t udp_length = load_be16(frame + l4 + offsetof(udp_header, length));
  if (udp_length != end - l4) return esp_result::malformed;
  const uint8_t* esp = frame + l4 + sizeof(udp_header);
  esp_length = udp_length - sizeof(udp_header);
  // RFC 3948 section 2.3: a NAT-keepalive is one 0xff byte; section 2.2: IKE on this port
  // starts with four zero bytes where ESP has its SPI (0 is never an SPI).
  if ((esp_length == 1 && esp[0] == 0xff) || (esp_length >= 4 && load_be32(esp) == 0))
    return esp_result::not_esp;
  if (esp_length < kEspHeaderSize + kEspIvSize + kMinEncrypted + kEspIcvSize)
    return esp_result::malformed;
  if ((esp_length - kEspHeaderSize - kEspIvSize - kEspIcvSize) % 4)
    return esp_result::malformed;  // RFC 4303 section 2.4
  return esp_result::ok;
}
}  // namespace

esp_result esp_spi_of(const esp_frame& f, const parsed_packet& outer, uint32_t& spi) {
  uint32_t esp_length;
  if (const esp_result bad = check_esp_frame(f, outer, esp_length); bad != esp_result::ok) return bad;
  spi = load_be32(f.data + outer.l4_offset + sizeof(udp_header));
  return esp_result::ok;
}

esp_result esp_decapsulate_frame(inbound_sa_table& table, esp_frame& f, parsed_packet& outer) {
  uint32_t esp_length;
  if (const esp_result bad = check_esp_frame(f, outer, esp_length); bad != esp_result::ok) return bad;
  // RFC 4303 section 3.4.2: the SA by SPI (and, here, the sender's address).
  const uint8_t* frame = f.data;
  const uint32_t spi = load_be32(frame + outer.l4_offset + sizeof(udp_header));
  inbound_sa* sa = table.find(reinterpret_cast<const ipv4_header*>(frame + outer.l3_offset)->source, spi);
  if (!sa) return esp_result::no_sa;
  return esp_decapsulate_frame(*sa, f, outer);
}

esp_result esp_decapsulate_frame(inbound_sa& sa_ref, esp_frame& f, parsed_packet& outer) {
  uint32_t esp_length;
  if (const esp_result bad = check_esp_frame(f, outer, esp_length); bad != esp_result::ok) return bad;
  inbound_sa* sa = &sa_ref;
  const uint32_t l3 = outer.l3_offset, l4 = outer.l4_offset;
  uint8_t* frame = f.data;
  const uint8_t* esp = frame + l4 + sizeof(udp_header);
  const uint32_t encrypted = esp_length - kEspHeaderSize - kEspIvSize - kEspIcvSize;
  const uint32_t spi = load_be32(esp);
  if (spi != sa->spi) return esp_result::no_sa;
  // Section 3.4.3: the replay check before the ICV; the window moves only after it.
  // The 64-bit sequence number: the IV, when its low half is the header's (what every
  // meshlane sender sends, esp.h): a receiver then needs no guess at the high half, so
  // a sender that restarted with a much higher number, or a receiver that restarted
  // with a fresh window, still agree. A forged IV changes the nonce, and the ICV fails.
  // Otherwise (a sender with other IVs) the high half is reconstructed (RFC 4303
  // appendix A2.2).
  const uint32_t low = load_be32(esp + 4);
  uint64_t iv;
  std::memcpy(&iv, esp + kEspHeaderSize, 8);
  iv = __builtin_bswap64(iv);
  const bool iv_is_sequence = iv != 0 && static_cast<uint32_t>(iv) == low;
  const uint64_t sequence = iv_is_sequence ? sa->window.check_sequence(iv) : sa->window.check(low);
  if (sequence == 0) {
    sa->replays.add(1);
    return esp_result::replay;
  }
  uint8_t aad[kAadSize];
  make_aad(aad, spi, sequence);
  uint8_t* payload = frame + l4 + kEspFrontSize;
  if (!sa->cipher.open(esp + kEspHeaderSize, aad, kAadSize, payload, encrypted,
                       payload + encrypted)) {
    // Below the window, tried as the next 2^32 block and failed there: an old packet
    // (or a forgery that looks like one), as Linux and DPDK would drop it after the ICV.
    if (!iv_is_sequence && sa->window.read_as_next_block(sequence)) {
      sa->replays.add(1);
      return esp_result::replay;
    }
    sa->auth_failures.add(1);
    return esp_result::auth_failed;
  }
  // The sequence number is the sender's (the ICV says so) even if what follows is
  // malformed: it is spent.
  sa->window.accept(sequence);
  sa->highest.value.store(sa->window.highest(), std::memory_order_relaxed);

  const uint32_t padding = payload[encrypted - 2];
  // Transport mode here carries exactly one UDP datagram (Geneve); anything else,
  // including dummy packets (next header 59, RFC 4303 section 2.6), is dropped.
  if (payload[encrypted - 1] != kProtoUdp || padding + 2 + sizeof(udp_header) > encrypted)
    return esp_result::malformed;
  const uint32_t datagram = encrypted - 2 - padding;
  // RFC 4303 section 2.4: the default padding is 1, 2, 3, ...; it is what we send, and
  // the receiver should check it.
  for (uint32_t i = 0; i < padding; ++i)
    if (payload[datagram + i] != static_cast<uint8_t>(i + 1)) return esp_result::malformed;
  if (load_be16(payload + offsetof(udp_header, length)) != datagram) return esp_result::malformed;
  sa->packets.add(1);
  sa->bytes.add(datagram);

  // The Ethernet and IPv4 headers move forward over the UDP header, ESP header and IV.
  auto* ip = reinterpret_cast<ipv4_header*>(frame + l3);
  const uint32_t new_total = (l4 - l3) + datagram;
  const uint16_t old_total_length = ip->total_length;
  ip->total_length = to_net16(static_cast<uint16_t>(new_total));
  ip->checksum = checksum_update16(ip->checksum, old_total_length, ip->total_length);
  move_headers(frame + kEspFrontSize, frame, l4);
  const uint32_t old_length = f.length;
  f.data = frame + kEspFrontSize;
  f.length = l4 + datagram;
  f.headroom += kEspFrontSize;
  f.tailroom += old_length - kEspFrontSize - f.length;
  outer.l3_length = static_cast<uint16_t>(new_total);
  outer.source_port = load_be16(payload + offsetof(udp_header, source_port));
  outer.destination_port = load_be16(payload + offsetof(udp_header, destination_port));
  outer.tcp_flags = 0;
  return esp_result::ok;
}

}  // namespace meshlane
