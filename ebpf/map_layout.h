/* Map layouts shared by the BPF programs (C, BPF target) and the C++ loader/writer.
 *
 * Plain C, fixed-width types, no padding holes (every struct is a multiple of 8 bytes
 * with explicit pad fields), so that both compilers agree on every byte. Addresses are
 * 16 bytes in network order with IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), the same
 * form as control/net_address.h, so one key shape serves both families. Ports are in
 * host order.
 */
#ifndef MESHLANE_EBPF_MAP_LAYOUT_H
#define MESHLANE_EBPF_MAP_LAYOUT_H

#ifdef __BPF__
#include <linux/types.h>
typedef __u8 ml_u8;
typedef __u16 ml_u16;
typedef __u32 ml_u32;
typedef __u64 ml_u64;
#else
#include <stdint.h>
typedef uint8_t ml_u8;
typedef uint16_t ml_u16;
typedef uint32_t ml_u32;
typedef uint64_t ml_u64;
#endif

#define ML_MAX_LOCAL_PODS 65536
#define ML_MAX_SERVICES 65536
/* Connect-time choice: each service frontend has a weighted Maglev slice of this many
 * slots (prime, NSDI 2016 section 3.4); enough for weight ratios up to ~1:1000. */
#define ML_SERVICE_SLOTS 1021
#define ML_MAX_BACKEND_SLOTS (1 << 20)
#define ML_MAX_SOCKETS 131072
#define ML_MAX_CONNECT_RECORDS 131072

struct ml_addr {
  ml_u32 words[4]; /* network order; IPv4 in words[3] with words[2] == htonl(0xffff) */
};

/* sockhash key: one TCP connection end, seen from its own socket. */
struct ml_sock_key {
  struct ml_addr local;
  struct ml_addr remote;
  ml_u32 local_port;  /* host order */
  ml_u32 remote_port; /* host order */
};

/* Local pods: a pod address of this node -> flags (reserved for policy). */
struct ml_pod_value {
  ml_u32 flags;
  ml_u32 pad;
};

/* A service frontend as a client dials it. */
struct ml_service_key {
  struct ml_addr vip;
  ml_u16 port; /* host order */
  ml_u8 protocol; /* IPPROTO_TCP or IPPROTO_UDP */
  ml_u8 pad;
  ml_u32 pad2;
};

/* Which slot table is live for a frontend. The writer fills a fresh table id, then flips
 * this entry to it, then deletes the old table: readers see the old or the new table,
 * never a half-written one, and never a service without backends. */
/* Session affinity: pick the slot by the client's network-namespace cookie (one per pod,
 * so one per client pod address) instead of the socket cookie, so every connection of a
 * pod meets the same backend, on every port of the service (its frontends share the
 * Maglev slot order). */
#define ML_SERVICE_AFFINITY 1u

struct ml_service_value {
  ml_u32 table_id;
  ml_u32 slot_count;  /* 0: no backends, leave the connection alone */
  ml_u64 content_hash; /* of the slot contents, so an unchanged service is not rewritten */
  ml_u32 flags;        /* ML_SERVICE_* */
  ml_u32 pad;
};

struct ml_slot_key {
  ml_u32 table_id;
  ml_u32 slot;
};

struct ml_backend {
  struct ml_addr ip;
  ml_u16 port; /* host order */
  ml_u16 pad;
  ml_u32 pad2;
};

/* What connect/sendmsg rewrote for a socket, so getpeername/recvmsg can show the VIP. */
struct ml_connect_record {
  struct ml_addr vip;
  struct ml_addr backend;
  ml_u16 vip_port;
  ml_u16 backend_port;
  ml_u32 pad;
};

/* Per-CPU counters; the loader sums them across CPUs. */
struct ml_counters {
  ml_u64 redirected_messages;
  ml_u64 redirected_bytes;
  ml_u64 passed_messages; /* sk_msg on a tracked socket whose peer was not found */
  ml_u64 passed_bytes;
  ml_u64 sockets_added;
  ml_u64 socket_add_failures;
  ml_u64 connect_rewrites;
  ml_u64 sendmsg_rewrites;
  ml_u64 peer_restores; /* getpeername/recvmsg answered with the VIP */
  ml_u64 services_without_backends; /* connects to a VIP that had no backend */
};

#endif /* MESHLANE_EBPF_MAP_LAYOUT_H */
