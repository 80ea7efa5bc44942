// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* meshlane's pod-local fast path (DESIGN.md):
 *  - sockops puts established TCP sockets whose both ends are pods of this node into a
 *    sockhash; sk_msg then moves each message straight into the peer socket's ingress,
 *    skipping TCP/IP, veth and netfilter on both sides.
 *  - cgroup sock_addr hooks load-balance service VIPs at connect time (TCP) or per
 *    datagram (UDP sendmsg), and restore the VIP in getpeername/recvmsg, so most pod
 *    traffic needs no per-packet NAT.
 * Only UAPI context structures are read, so the object needs no kernel-specific
 * relocations and runs unchanged on any kernel with these program types.
 */
#include <linux/bpf.h>
#include <linux/in.h>
/* Address families from the UAPI values; libc headers do not build for the BPF target. */
#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ebpf/fast_path_maps.bpf.h"
#include "ebpf/policy_decide.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#ifdef ML_BUILD_VARIANT
/* A second build of the same programs (the upgrade test runs it): only this differs. */
const volatile __u32 ml_build_variant = ML_BUILD_VARIANT;
#endif


static __always_inline void addr_from_v4(struct ml_addr* a, __u32 ip4_be) {
  a->words[0] = 0;
  a->words[1] = 0;
  a->words[2] = bpf_htonl(0xffff);
  a->words[3] = ip4_be;
}

/* remote_port in bpf_sock_ops and sk_msg_md holds the network-order port; kernels have
 * placed it in the upper or the lower 16 bits. Both programs go through this one
 * conversion, so their keys agree whichever layout the kernel uses. */
static __always_inline __u32 remote_port_host(__u32 raw) {
  return raw > 0xffff ? bpf_ntohl(raw) : bpf_ntohs((__u16)raw);
}

/* Context fields must be read 4 bytes at a time: clang would otherwise merge adjacent
 * u32 loads into one u64 load, which the verifier refuses for context structures. */
#define CTX_U32(field) (*(volatile __u32*)&(field))

static __always_inline void addr_from_ctx6(struct ml_addr* a, __u32* ip6) {
  a->words[0] = CTX_U32(ip6[0]);
  a->words[1] = CTX_U32(ip6[1]);
  a->words[2] = CTX_U32(ip6[2]);
  a->words[3] = CTX_U32(ip6[3]);
}

/* ---- socket-to-socket redirection ------------------------------------------------
 *
 * The rule that keeps a stream in order. A receiving socket in the sockhash reads its
 * psock queue (redirected messages) before its TCP receive queue (tcp_bpf_recvmsg), so
 * a byte redirected after another byte took TCP would overtake it. That happens when a
 * client sends before the server socket is established: its handshake ACK was lost (a
 * full accept queue, a drop), the server is established only by the client's first data
 * segment, and that segment travels TCP while the next message finds the server in the
 * sockhash. So:
 *  1. a direction is redirected only from its first byte: sockops adds a socket only if
 *     no payload has moved yet (TCP Fast Open carries some in the SYN);
 *  2. the first time a direction's peer is not in the sockhash, the direction takes TCP
 *     and is never redirected again (ML_SOCK_ON_TCP in socket local storage);
 *  3. keys carry both ends' initial sequence numbers, so a message is only ever
 *     redirected into the socket at the other end of its own connection, never into a
 *     stale socket that once had the same addresses and ports.
 * A direction therefore carries all its bytes through the psock queue or all of those
 * after its first TCP byte through TCP; the receiver drains the first before the second,
 * which is stream order. */

static __always_inline int sock_key_of(struct bpf_sock_ops* ops, struct ml_sock_key* key) {
  if (ops->family == AF_INET) {
    addr_from_v4(&key->local, ops->local_ip4);
    addr_from_v4(&key->remote, ops->remote_ip4);
  } else if (ops->family == AF_INET6) {
    addr_from_ctx6(&key->local, ops->local_ip6);
    addr_from_ctx6(&key->remote, ops->remote_ip6);
  } else {
    return 0;
  }
  key->local_port = ops->local_port;
  key->remote_port = remote_port_host(ops->remote_port);
  /* At establishment, before any payload: local ISN + 1 and remote ISN + 1. */
  key->local_seq = ops->snd_una;
  key->remote_seq = ops->rcv_nxt;
  return 1;
}

static __always_inline void peer_key_of(const struct ml_sock_key* key, struct ml_sock_key* peer) {
  peer->local = key->remote;
  peer->remote = key->local;
  peer->local_port = key->remote_port;
  peer->remote_port = key->local_port;
  peer->local_seq = key->remote_seq;
  peer->remote_seq = key->local_seq;
}

SEC("sockops")
int meshlane_sockops(struct bpf_sock_ops* ops) {
  if (ops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && ops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
    return 1;
  struct ml_sock_key key = {};
  if (!sock_key_of(ops, &key)) return 1;
  /* Only connections whose both ends are pods of this node; anything else (a remote
   * peer, the node itself, loopback) keeps the normal path and never enters the map. */
  struct ml_pod_value* local = bpf_map_lookup_elem(&ml_local_pods, &key.local);
  if (!local) return 1;
  struct ml_pod_value* remote = bpf_map_lookup_elem(&ml_local_pods, &key.remote);
  if (!remote) return 1;
  struct ml_counters* c = counters();
  /* Both ends must allow the redirect (mode and labels, written by the agent): a socket
   * in the map reads through its psock, so one whose peer never redirects stays out. */
  if (!(local->flags & remote->flags & ML_POD_REDIRECT)) {
    if (c) __sync_fetch_and_add(&c->sockets_not_redirected, 1);
    return 1;
  }
  if (ops->data_segs_in || ops->data_segs_out) { /* rule 1 */
    if (c) __sync_fetch_and_add(&c->sockets_early_payload, 1);
    return 1;
  }
  struct bpf_sock* sk = ops->sk;
  if (!sk) return 1;
  struct ml_sock_state* state = bpf_sk_storage_get(&ml_sock_state, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
  if (!state) {
    if (c) __sync_fetch_and_add(&c->socket_add_failures, 1);
    return 1;
  }
  peer_key_of(&key, &state->peer);
  /* The kernel removes a socket from every sockmap/sockhash when it closes. An insert
   * never replaces another socket's entry (rule 3 makes a collision a bug, so count it). */
  long err = bpf_sock_hash_update(ops, &ml_sock_hash, &key, BPF_NOEXIST);
  if (err == 0) {
    state->flags = ML_SOCK_IN_MAP;
    if (c) __sync_fetch_and_add(&c->sockets_added, 1);
  } else if (c) {
    if (err == -17 /* EEXIST */) __sync_fetch_and_add(&c->socket_collisions, 1);
    else __sync_fetch_and_add(&c->socket_add_failures, 1);
  }
  return 1;
}

SEC("sk_msg")
int meshlane_sk_msg(struct sk_msg_md* msg) {
  const __u64 size = msg->size;
  struct ml_counters* c = counters();
  struct bpf_sock* sk = msg->sk;
  struct ml_sock_state* state = sk ? bpf_sk_storage_get(&ml_sock_state, sk, 0, 0) : 0;
  /* sk_msg runs under the sending socket's lock: one writer of its state. */
  if (state && !(state->flags & ML_SOCK_ON_TCP)) {
    if (bpf_msg_redirect_hash(msg, &ml_sock_hash, &state->peer, BPF_F_INGRESS) == SK_PASS) {
      state->flags |= ML_SOCK_REDIRECTED;
      if (c) {
        c->redirected_messages += 1; /* per-CPU entry: no other writer */
        c->redirected_bytes += size;
      }
      return SK_PASS;
    }
    /* Rule 2: the peer is not in the sockhash (not established yet, outside the cgroup,
     * or closed). From here on this direction takes TCP. */
    state->flags |= ML_SOCK_ON_TCP;
    if (c) c->directions_to_tcp += 1;
  }
  if (c) {
    c->passed_messages += 1;
    c->passed_bytes += size;
  }
  return SK_PASS;
}

/* ---- connect-time service load balancing ------------------------------------------ */

/* The backend for a frontend: with session affinity a Maglev slot picked by the client
 * pod's network-namespace cookie, else the backend whose cumulative weight range holds
 * hash(socket cookie) % total weight. */
static __always_inline struct ml_backend* choose_backend(struct bpf_sock_addr* ctx,
                                                        const struct ml_service_key* key,
                                                        __u64 cookie) {
  struct ml_service_value* svc = bpf_map_lookup_elem(&ml_services, key);
  if (!svc) return 0;
  const __u32 count = svc->backend_count;
  if (count == 0 || svc->total_weight == 0) {
    struct ml_counters* c = counters();
    if (c) c->services_without_backends += 1;
    return 0;
  }
  const __u64 chooser = (svc->flags & ML_SERVICE_AFFINITY) ? bpf_get_netns_cookie(ctx) : cookie;
  const __u32 h = (__u32)((chooser * 0x9e3779b97f4a7c15ULL) >> 32);
  __u32 index;
  if (svc->flags & ML_SERVICE_AFFINITY) {
    if (svc->slot_count == 0) return 0;
    const __u32 position = svc->slot_base + h % svc->slot_count;
    const __u32 chunk_key = position / ML_SLOTS_PER_CHUNK;
    struct ml_slot_chunk* chunk = bpf_map_lookup_elem(&ml_slots, &chunk_key);
    if (!chunk) return 0;
    index = chunk->backend[position & (ML_SLOTS_PER_CHUNK - 1)];
  } else {
    const __u32 target = h % svc->total_weight;
    __u32 low = 0, high = count - 1;
    /* 17 halvings cover the 65,535 backends a frontend may have. */
    for (int i = 0; i < 17 && low < high; ++i) {
      const __u32 middle = low + (high - low) / 2;
      const __u32 backend_key = svc->backend_base + middle;
      struct ml_backend* b = bpf_map_lookup_elem(&ml_backends, &backend_key);
      if (!b) return 0;
      if (b->cumulative_weight > target) high = middle;
      else low = middle + 1;
    }
    index = low;
  }
  if (index >= count) return 0;
  const __u32 backend_key = svc->backend_base + index;
  return bpf_map_lookup_elem(&ml_backends, &backend_key);
}

static __always_inline int rewrite(struct bpf_sock_addr* ctx, const struct ml_addr* vip, int v6,
                                   int is_sendmsg) {
  if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP) return 1;
  struct ml_service_key key = {};
  key.vip = *vip;
  key.port = bpf_ntohs((__u16)ctx->user_port);
  key.protocol = (__u8)ctx->protocol;
  const __u64 cookie = bpf_get_socket_cookie(ctx);
  struct ml_backend* backend = choose_backend(ctx, &key, cookie);
  if (!backend) return 1;

  struct ml_connect_key record_key = {};
  record_key.cookie = cookie;
  record_key.backend = backend->ip;
  record_key.backend_port = backend->port;
  struct ml_connect_record record = {};
  record.vip = key.vip;
  record.vip_port = key.port;
  bpf_map_update_elem(&ml_connect_records, &record_key, &record, BPF_ANY);

  if (v6) {
    ctx->user_ip6[0] = backend->ip.words[0];
    ctx->user_ip6[1] = backend->ip.words[1];
    ctx->user_ip6[2] = backend->ip.words[2];
    ctx->user_ip6[3] = backend->ip.words[3];
  } else {
    ctx->user_ip4 = backend->ip.words[3];
  }
  ctx->user_port = bpf_htons(backend->port);
  struct ml_counters* c = counters();
  if (c) {
    if (is_sendmsg) c->sendmsg_rewrites += 1;
    else c->connect_rewrites += 1;
  }
  return 1;
}

/* getpeername and recvmsg see the backend; put back the VIP this socket sent to that
 * backend through, so the application sees the address it dialled. */
static __always_inline int restore(struct bpf_sock_addr* ctx, int v6) {
  struct ml_connect_key record_key = {};
  record_key.cookie = bpf_get_socket_cookie(ctx);
  if (v6) {
    addr_from_ctx6(&record_key.backend, ctx->user_ip6);
  } else {
    addr_from_v4(&record_key.backend, ctx->user_ip4);
  }
  record_key.backend_port = bpf_ntohs((__u16)ctx->user_port);
  struct ml_connect_record* record = bpf_map_lookup_elem(&ml_connect_records, &record_key);
  if (!record) return 1;
  if (v6) {
    ctx->user_ip6[0] = record->vip.words[0];
    ctx->user_ip6[1] = record->vip.words[1];
    ctx->user_ip6[2] = record->vip.words[2];
    ctx->user_ip6[3] = record->vip.words[3];
  } else {
    ctx->user_ip4 = record->vip.words[3];
  }
  ctx->user_port = bpf_htons(record->vip_port);
  struct ml_counters* c = counters();
  if (c) c->peer_restores += 1;
  return 1;
}

static __always_inline void vip_v4(struct bpf_sock_addr* ctx, struct ml_addr* a) {
  addr_from_v4(a, ctx->user_ip4);
}

static __always_inline void vip_v6(struct bpf_sock_addr* ctx, struct ml_addr* a) {
  addr_from_ctx6(a, ctx->user_ip6);
}

/* ---- L4 authorization at connect/sendmsg (issue 16) -------------------------------
 *
 * Enforced at the destination, as ztunnel does: after the load balancer chose a backend,
 * the destination address (a pod of this node, or nothing to decide here) gives the
 * policy class; the source is the connecting pod, found by its network namespace. The
 * verdict is the compiled tables' (control/policy_tables.h) read from the live set:
 * port group, identity group, address group (an LPM trie), one verdict. A denied connect
 * or datagram fails with EPERM (the program returns 0) and is counted by policy and
 * reason. The verdict is taken once per connect (TCP, connected UDP) or per datagram
 * (unconnected UDP sendmsg); after a policy change the agent runs the reaper
 * (policy_reaper.bpf.c), which closes the connections the new policy denies (README,
 * "Policy"). */
/* 1: allowed, 0: denied (counted). A connect (TCP, or UDP connect) from the pods is
 * marked in ml_policy_initiators, allowed or not, so that the reaper re-checks the
 * connections this side opened after a policy change (and never an accepted one). */
static __always_inline int authorize(struct bpf_sock_addr* ctx, int v6, int is_sendmsg) {
  if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP) return 1;
  if (!is_sendmsg && ctx->sk) bpf_sk_storage_get(&ml_policy_initiators, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
  const int live = policy_live_set();
  if (live < 0) return 1;
  const __u32 set = (__u32)live;
  struct ml_addr dest;
  if (v6) addr_from_ctx6(&dest, ctx->user_ip6);
  else addr_from_v4(&dest, ctx->user_ip4);
  const __u16 port = bpf_ntohs((__u16)ctx->user_port);
  struct ml_policy_verdict* verdict = policy_decide(set, &dest, port, bpf_get_netns_cookie(ctx), v6);
  if (!verdict || verdict->allowed) return 1;
  policy_count_denial(set, verdict);
  struct ml_counters* counts = counters();
  if (counts) {
    if (is_sendmsg) counts->policy_denied_datagrams += 1;
    else counts->policy_denied_connects += 1;
  }
  return 0;
}

SEC("cgroup/connect4")
int meshlane_connect4(struct bpf_sock_addr* ctx) {
  struct ml_addr vip;
  vip_v4(ctx, &vip);
  rewrite(ctx, &vip, 0, 0);
  return authorize(ctx, 0, 0);
}

SEC("cgroup/connect6")
int meshlane_connect6(struct bpf_sock_addr* ctx) {
  struct ml_addr vip;
  vip_v6(ctx, &vip);
  rewrite(ctx, &vip, 1, 0);
  return authorize(ctx, 1, 0);
}

SEC("cgroup/sendmsg4")
int meshlane_sendmsg4(struct bpf_sock_addr* ctx) {
  struct ml_addr vip;
  vip_v4(ctx, &vip);
  rewrite(ctx, &vip, 0, 1);
  return authorize(ctx, 0, 1);
}

SEC("cgroup/sendmsg6")
int meshlane_sendmsg6(struct bpf_sock_addr* ctx) {
  struct ml_addr vip;
  vip_v6(ctx, &vip);
  rewrite(ctx, &vip, 1, 1);
  return authorize(ctx, 1, 1);
}

SEC("cgroup/recvmsg4")
int meshlane_recvmsg4(struct bpf_sock_addr* ctx) { return restore(ctx, 0); }

SEC("cgroup/recvmsg6")
int meshlane_recvmsg6(struct bpf_sock_addr* ctx) { return restore(ctx, 1); }

SEC("cgroup/getpeername4")
int meshlane_getpeername4(struct bpf_sock_addr* ctx) { return restore(ctx, 0); }

SEC("cgroup/getpeername6")
int meshlane_getpeername6(struct bpf_sock_addr* ctx) { return restore(ctx, 1); }
