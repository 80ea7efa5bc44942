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

char LICENSE[] SEC("license") = "Dual BSD/GPL";


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

static __always_inline int is_local_pod(const struct ml_addr* a) {
  return bpf_map_lookup_elem(&ml_local_pods, a) != 0;
}

/* ---- socket-to-socket redirection ------------------------------------------------ */

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
  return 1;
}

SEC("sockops")
int meshlane_sockops(struct bpf_sock_ops* ops) {
  struct ml_sock_key key = {};
  if (ops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && ops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
    return 1;
  if (!sock_key_of(ops, &key)) return 1;
  /* Only connections whose both ends are pods of this node; anything else (a remote
   * peer, the node itself) keeps the normal path. */
  if (!is_local_pod(&key.local) || !is_local_pod(&key.remote)) return 1;

  struct ml_counters* c = counters();
  /* The kernel removes a socket from every sockmap/sockhash when it closes. */
  long err = bpf_sock_hash_update(ops, &ml_sock_hash, &key, BPF_ANY);
  if (c) {
    if (err == 0) __sync_fetch_and_add(&c->sockets_added, 1);
    else __sync_fetch_and_add(&c->socket_add_failures, 1);
  }
  return 1;
}

SEC("sk_msg")
int meshlane_sk_msg(struct sk_msg_md* msg) {
  /* The peer socket is keyed from its own side: our remote is its local. */
  struct ml_sock_key peer = {};
  if (msg->family == AF_INET) {
    addr_from_v4(&peer.local, msg->remote_ip4);
    addr_from_v4(&peer.remote, msg->local_ip4);
  } else if (msg->family == AF_INET6) {
    addr_from_ctx6(&peer.local, msg->remote_ip6);
    addr_from_ctx6(&peer.remote, msg->local_ip6);
  } else {
    return SK_PASS;
  }
  peer.local_port = remote_port_host(msg->remote_port);
  peer.remote_port = msg->local_port;

  const __u64 size = msg->size;
  struct ml_counters* c = counters();
  if (bpf_msg_redirect_hash(msg, &ml_sock_hash, &peer, BPF_F_INGRESS) == SK_PASS) {
    if (c) {
      c->redirected_messages += 1; /* per-CPU entry: no other writer */
      c->redirected_bytes += size;
    }
  } else if (c) {
    /* Peer not in the sockhash (outside the cgroup, or already closed): normal path. */
    c->passed_messages += 1;
    c->passed_bytes += size;
  }
  return SK_PASS;
}

/* ---- connect-time service load balancing ------------------------------------------ */

static __always_inline struct ml_backend* choose_backend(struct bpf_sock_addr* ctx,
                                                        const struct ml_service_key* key,
                                                        __u64 cookie) {
  struct ml_service_value* svc = bpf_map_lookup_elem(&ml_services, key);
  if (!svc) return 0;
  if (svc->slot_count == 0) {
    struct ml_counters* c = counters();
    if (c) c->services_without_backends += 1;
    return 0;
  }
  /* Consistent per socket: the same cookie always lands on the same slot; with session
   * affinity, per client pod (its network namespace). */
  const __u64 chooser = (svc->flags & ML_SERVICE_AFFINITY) ? bpf_get_netns_cookie(ctx) : cookie;
  __u64 h = chooser * 0x9e3779b97f4a7c15ULL;
  struct ml_slot_key slot = {.table_id = svc->table_id,
                             .slot = (__u32)(h >> 32) % svc->slot_count};
  return bpf_map_lookup_elem(&ml_backend_slots, &slot);
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

  struct ml_connect_record record = {};
  record.vip = key.vip;
  record.vip_port = key.port;
  record.backend = backend->ip;
  record.backend_port = backend->port;
  bpf_map_update_elem(&ml_connect_records, &cookie, &record, BPF_ANY);

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

/* getpeername and recvmsg see the backend; put the VIP back where the rewrite put the
 * backend, so the application sees the address it dialled. */
static __always_inline int restore(struct bpf_sock_addr* ctx, int v6) {
  const __u64 cookie = bpf_get_socket_cookie(ctx);
  struct ml_connect_record* record = bpf_map_lookup_elem(&ml_connect_records, &cookie);
  if (!record) return 1;
  struct ml_addr seen = {};
  if (v6) {
    addr_from_ctx6(&seen, ctx->user_ip6);
  } else {
    addr_from_v4(&seen, ctx->user_ip4);
  }
  if (seen.words[0] != record->backend.words[0] || seen.words[1] != record->backend.words[1] ||
      seen.words[2] != record->backend.words[2] || seen.words[3] != record->backend.words[3] ||
      bpf_ntohs((__u16)ctx->user_port) != record->backend_port)
    return 1;
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

SEC("cgroup/connect4")
int meshlane_connect4(struct bpf_sock_addr* ctx) {
  struct ml_addr vip;
  vip_v4(ctx, &vip);
  return rewrite(ctx, &vip, 0, 0);
}

SEC("cgroup/connect6")
int meshlane_connect6(struct bpf_sock_addr* ctx) {
  struct ml_addr vip;
  vip_v6(ctx, &vip);
  return rewrite(ctx, &vip, 1, 0);
}

SEC("cgroup/sendmsg4")
int meshlane_sendmsg4(struct bpf_sock_addr* ctx) {
  struct ml_addr vip;
  vip_v4(ctx, &vip);
  return rewrite(ctx, &vip, 0, 1);
}

SEC("cgroup/sendmsg6")
int meshlane_sendmsg6(struct bpf_sock_addr* ctx) {
  struct ml_addr vip;
  vip_v6(ctx, &vip);
  return rewrite(ctx, &vip, 1, 1);
}

SEC("cgroup/recvmsg4")
int meshlane_recvmsg4(struct bpf_sock_addr* ctx) { return restore(ctx, 0); }

SEC("cgroup/recvmsg6")
int meshlane_recvmsg6(struct bpf_sock_addr* ctx) { return restore(ctx, 1); }

SEC("cgroup/getpeername4")
int meshlane_getpeername4(struct bpf_sock_addr* ctx) { return restore(ctx, 0); }

SEC("cgroup/getpeername6")
int meshlane_getpeername6(struct bpf_sock_addr* ctx) { return restore(ctx, 1); }
