// The tuple a frame's raw bytes give before it is parsed (dataplane/tuple_guess.h), from
// which process_burst prefetches the policy tables' buckets a few packets ahead: a wrong
// guess would fetch the wrong bucket, costing a useless miss and saving nothing, silently,
// so the guess is checked against the parse.
#include <gtest/gtest.h>

#include "dataplane/tuple_guess.h"
#include "tests/dataplane/dataplane_fixture.h"

namespace meshlane {
namespace {

using namespace testing;
using detail::guess_tuple;
using detail::tuple_guess;

// Checks the guess from `frame` against the parse of its packet at `inner_offset` (past
// the tunnel headers of a frame from the uplink).
void expect_guess_is_parse(const bytes& frame, bool from_uplink, uint32_t inner_offset = 0) {
  parsed_packet p;
  ASSERT_EQ(parse_packet(frame.data() + inner_offset, static_cast<uint32_t>(frame.size() - inner_offset), p),
            drop_reason::none);
  tuple_guess g;
  ASSERT_TRUE(guess_tuple(frame.data(), static_cast<uint32_t>(frame.size()), from_uplink, g));
  EXPECT_EQ(g.ip, frame.data() + inner_offset + p.l3_offset);
  EXPECT_EQ(g.ip + g.l4, frame.data() + inner_offset + p.l4_offset);
  EXPECT_EQ(g.v6, p.l3 == l3_kind::ipv6);
  EXPECT_EQ(g.protocol, p.l4_protocol);
  EXPECT_EQ(g.source_port, p.source_port);
  EXPECT_EQ(g.destination_port, p.destination_port);
}

l4_spec l4(uint8_t protocol, uint16_t source_port, uint16_t destination_port) {
  l4_spec spec;
  spec.protocol = protocol;
  spec.source_port = source_port;
  spec.destination_port = destination_port;
  return spec;
}

TEST(TupleGuess, APodsIpv4AndIpv6FramesAreGuessedAsTheyParse) {
  const bytes tcp4 = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.10"),
                                l4(wire::kProtoTcp, 40001, 80));
  const bytes udp4 = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.12"),
                                l4(wire::kProtoUdp, 40002, 53));
  const bytes tcp6 = ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:ffff::10"),
                                l4(wire::kProtoTcp, 40003, 80));
  const bytes udp6 = ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:ffff::10"),
                                l4(wire::kProtoUdp, 40004, 53));
  for (const bytes* frame : {&tcp4, &udp4, &tcp6, &udp6}) expect_guess_is_parse(*frame, false);
  // An IPv4 header with options: the ports where its length says.
  bytes with_options = tcp4;
  with_options[14] = 0x46;
  with_options.insert(with_options.begin() + 14 + 20, {1, 1, 1, 0});  // NOP, NOP, NOP, EOL
  with_options[14 + 3] = static_cast<uint8_t>(with_options[14 + 3] + 4);  // total length
  tuple_guess g;
  ASSERT_TRUE(guess_tuple(with_options.data(), static_cast<uint32_t>(with_options.size()), false, g));
  EXPECT_EQ(g.l4, 24u);
  EXPECT_EQ(g.source_port, 40001);
  EXPECT_EQ(g.destination_port, 80);
}

TEST(TupleGuess, AFrameFromTheUplinkIsGuessedInsideGeneveWithOrWithoutOptions) {
  const bytes inner = ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.2.20"), ip4("198.18.1.10"),
                                 l4(wire::kProtoTcp, 8080, 61441));
  const bytes inner6 = ipv6_frame(kWebMac, kWebPortMac, ip6("fd00:6d6c:2::20"), ip6("fd00:6d6c:1::10"),
                                  l4(wire::kProtoUdp, 5353, 40004));
  for (const bytes& options : {bytes{}, identity_option(7)}) {
    for (const bytes* frame : {&inner, &inner6}) {
      const bytes tunnelled = geneve_from(ip4("198.19.0.2"), *frame, 0, wire::kEtherTypeTransparentBridging, options);
      expect_guess_is_parse(tunnelled, true, static_cast<uint32_t>(tunnelled.size() - frame->size()));
    }
  }
}

TEST(TupleGuess, WhatIsNotAPlainIpFrameIsNoGuess) {
  tuple_guess g;
  const bytes tcp4 = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.10"),
                                l4(wire::kProtoTcp, 40001, 80));
  // Cut short of the ports, at every length.
  for (size_t length = 0; length < 14 + 20 + 4; ++length)
    EXPECT_FALSE(guess_tuple(tcp4.data(), static_cast<uint32_t>(length), false, g)) << length;
  EXPECT_TRUE(guess_tuple(tcp4.data(), 14 + 20 + 4, false, g));
  // ARP; a VLAN tag (the guess does not look behind one).
  const bytes arp = arp_request(kClientMac, ip4("198.18.1.10"), ip4("198.18.1.1"));
  EXPECT_FALSE(guess_tuple(arp.data(), static_cast<uint32_t>(arp.size()), false, g));
  bytes tagged = tcp4;
  tagged.insert(tagged.begin() + 12, {0x81, 0x00, 0x00, 0x05});
  EXPECT_FALSE(guess_tuple(tagged.data(), static_cast<uint32_t>(tagged.size()), false, g));
  // From the uplink: a frame that is not Geneve (plain TCP to a pod, UDP to another port).
  EXPECT_FALSE(guess_tuple(tcp4.data(), static_cast<uint32_t>(tcp4.size()), true, g));
  bytes tunnelled = geneve_from(ip4("198.19.0.2"), tcp4);
  EXPECT_TRUE(guess_tuple(tunnelled.data(), static_cast<uint32_t>(tunnelled.size()), true, g));
  tunnelled[14 + 20 + 3] ^= 1;  // UDP destination port 6080
  EXPECT_FALSE(guess_tuple(tunnelled.data(), static_cast<uint32_t>(tunnelled.size()), true, g));
}

}  // namespace
}  // namespace meshlane
