// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* The policy reaper (issue 16): after a policy change the agent runs these socket
 * iterators in each pod's network namespace (ebpf/policy_reaper.h); every connection a
 * pod opened (marked in ml_policy_initiators at connect) that the live policy set now
 * denies is destroyed with bpf_sock_destroy (TCP: a reset to the peer and ECONNABORTED
 * to the application; a connected UDP socket: ECONNABORTED), as ztunnel closes the
 * connections a new policy denies. Accepted sockets are never touched: the destination's
 * policy speaks about connections to it, and its own side is the connecting one's peer.
 *
 * A separate object from fast_path.bpf.c: it needs kernel types (CO-RE, BTF) and a kfunc
 * of Linux 6.5, where the fast path itself runs on any kernel with its program types;
 * it shares the fast path's maps through their pins. */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ebpf/policy_decide.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The kernel's types, the fields read here only; CO-RE finds them in the running
 * kernel's BTF (anonymous unions included). */
struct net {
  __u64 net_cookie;
} __attribute__((preserve_access_index));
typedef struct {
  struct net* net;
} possible_net_t;
struct sock_common {
  __be32 skc_daddr;
  __be16 skc_dport;
  unsigned short skc_family;
  volatile unsigned char skc_state;
  possible_net_t skc_net;
  struct in6_addr skc_v6_daddr;
} __attribute__((preserve_access_index));
struct sock {
  struct sock_common __sk_common;
} __attribute__((preserve_access_index));
struct tcp_sock;
struct udp_sock;
struct bpf_iter_meta;
struct bpf_iter__tcp {
  struct bpf_iter_meta* meta;
  struct sock_common* sk_common;
} __attribute__((preserve_access_index));
struct bpf_iter__udp {
  struct bpf_iter_meta* meta;
  struct udp_sock* udp_sk;
} __attribute__((preserve_access_index));

extern int bpf_sock_destroy(struct sock_common* sk) __ksym;

#define ML_TCP_ESTABLISHED 1
#define ML_TCP_SYN_SENT 2

/* What one run destroyed; the agent reads and clears them (one run at a time). */
__u64 reaped_tcp = 0;
__u64 reaped_udp = 0;

/* 1 when the connection `skc` opened is denied by the live set. */
static __always_inline int denied(struct sock_common* skc) {
  const int live = policy_live_set();
  if (live < 0) return 0;
  const unsigned short family = skc->skc_family;
  struct ml_addr dest = {};
  int v6 = 0;
  if (family == AF_INET) {
    dest.words[2] = bpf_htonl(0xffff);
    dest.words[3] = skc->skc_daddr;
  } else if (family == AF_INET6) {
    __builtin_memcpy(&dest, &skc->skc_v6_daddr, 16);
    /* A dual-stack socket talking IPv4 carries its peer IPv4-mapped, as ml_addr does. */
    v6 = !(dest.words[0] == 0 && dest.words[1] == 0 && dest.words[2] == bpf_htonl(0xffff));
  } else {
    return 0;
  }
  const __u16 port = bpf_ntohs(skc->skc_dport);
  const __u64 cookie = skc->skc_net.net->net_cookie;
  struct ml_policy_verdict* verdict = policy_decide((__u32)live, &dest, port, cookie, v6);
  if (!verdict || verdict->allowed) return 0;
  policy_count_denial((__u32)live, verdict);
  return 1;
}

SEC("iter/tcp")
int meshlane_reap_tcp(struct bpf_iter__tcp* ctx) {
  struct sock_common* skc = ctx->sk_common;
  if (!skc) return 0;
  const unsigned char state = skc->skc_state;
  if (state != ML_TCP_ESTABLISHED && state != ML_TCP_SYN_SENT) return 0;
  struct tcp_sock* tcp = bpf_skc_to_tcp_sock(skc); /* a full socket, not a request or time-wait */
  if (!tcp) return 0;
  if (!bpf_sk_storage_get(&ml_policy_initiators, tcp, 0, 0)) return 0;
  if (!denied(skc)) return 0;
  if (bpf_sock_destroy(skc) == 0) reaped_tcp += 1;
  return 0;
}

SEC("iter/udp")
int meshlane_reap_udp(struct bpf_iter__udp* ctx) {
  struct udp_sock* udp = ctx->udp_sk;
  if (!udp) return 0;
  struct sock_common* skc = &((struct sock*)udp)->__sk_common;
  if (skc->skc_state != ML_TCP_ESTABLISHED) return 0; /* only connected sockets have a peer */
  if (!bpf_sk_storage_get(&ml_policy_initiators, udp, 0, 0)) return 0;
  if (!denied(skc)) return 0;
  if (bpf_sock_destroy(skc) == 0) reaped_udp += 1;
  return 0;
}
