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

/* Bump when a struct below changes shape: pins of another layout version are replaced
 * (fresh maps), never read with the wrong structs. */
#define ML_LAYOUT_VERSION 4

#define ML_MAX_LOCAL_PODS 65536
/* Service frontends (VIP, port, protocol); control/connect_lb_limits.h validates a
 * document against these, so a publish never finds a map full. A hash map without
 * preallocation: kernel memory grows with the frontends in use (about 128 bytes each,
 * 13 MiB at 100,000). Layout version 4 raised it from 65,536 for 100,000 services. */
#define ML_MAX_SERVICES 131072
/* Backend entries: every frontend's backends in one array, a region per frontend. A
 * changed frontend gets a fresh region before its entry flips to it, so the array holds
 * twice what the validator lets a document use. An array map is allocated whole when
 * created: 2^22 x 24 bytes = 96 MiB of kernel memory per node (was 24 MiB at 2^20, too
 * few for 100,000 services x 16 backends = 1.6M entries). */
#define ML_MAX_BACKENDS (1 << 22)
/* Maglev slots of session-affinity frontends, ML_SLOTS_PER_CHUNK to an array element,
 * also twice what a document may use: 2^17 chunks x 64 bytes = 8 MiB, allocated whole. */
#define ML_SLOTS_PER_CHUNK 32
#define ML_MAX_SLOTS (1 << 22)
#define ML_MAX_SLOT_CHUNKS (ML_MAX_SLOTS / ML_SLOTS_PER_CHUNK)
#define ML_MAX_SOCKETS 131072
#define ML_MAX_CONNECT_RECORDS 131072

struct ml_addr {
  ml_u32 words[4]; /* network order; IPv4 in words[3] with words[2] == htonl(0xffff) */
};

/* sockhash key: one TCP connection end, seen from its own socket. The sequence numbers
 * are each side's first unsent and first unreceived byte when the connection was
 * established (snd_una, rcv_nxt): both ends compute the same pair, and a stale socket
 * that once had the same addresses and ports never has the same pair, so a message can
 * only be redirected into the very socket at the other end of its own connection. */
struct ml_sock_key {
  struct ml_addr local;
  struct ml_addr remote;
  ml_u32 local_port;  /* host order */
  ml_u32 remote_port; /* host order */
  ml_u32 local_seq;
  ml_u32 remote_seq;
};

/* Per-socket state (socket local storage), written by sockops at establishment, read and
 * advanced by sk_msg under the socket lock. */
#define ML_SOCK_IN_MAP 1u      /* this socket is in ml_sock_hash */
#define ML_SOCK_ON_TCP 2u      /* its messages take TCP for good: never redirected again */
#define ML_SOCK_REDIRECTED 4u  /* at least one message went straight to the peer */
struct ml_sock_state {
  ml_u32 flags; /* ML_SOCK_* */
  ml_u32 pad;
  struct ml_sock_key peer; /* the key of the socket at the other end */
};

/* Local pods: a pod address of this node -> flags. */
#define ML_POD_REDIRECT 1u /* its TCP connections to other such pods are redirected */
struct ml_pod_value {
  ml_u32 flags; /* ML_POD_* */
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

/* Session affinity: pick the backend by the client's network-namespace cookie (one per
 * pod) through a Maglev slot table, so every connection of a pod meets the same backend
 * and a backend change moves few pods. */
#define ML_SERVICE_AFFINITY 1u

/* A frontend's live tables: its backends are ml_backends[backend_base, + backend_count);
 * with affinity its Maglev slots are ml_slots positions [slot_base, + slot_count), each
 * an index into those backends. The writer fills fresh regions, then flips this entry to
 * them, waits for running programs (a map-in-map update is an RCU grace period) and only
 * then reuses the old regions: readers see the old or the new table, never a half-written
 * one, and never a service without backends. */
struct ml_service_value {
  ml_u32 backend_base;
  ml_u32 backend_count; /* 0: no backends, leave the connection alone */
  ml_u32 total_weight;  /* the last backend's cumulative weight */
  ml_u32 slot_base;     /* a multiple of ML_SLOTS_PER_CHUNK */
  ml_u32 slot_count;    /* 0 without affinity */
  ml_u32 flags;         /* ML_SERVICE_* */
  ml_u64 content_hash;  /* of the backends and slots, so an unchanged one is not rewritten */
};

/* Without affinity the backend is the first whose cumulative weight exceeds
 * hash % total_weight (a binary search): each socket lands by weight exactly. */
struct ml_backend {
  struct ml_addr ip;
  ml_u16 port; /* host order */
  ml_u16 pad;
  ml_u32 cumulative_weight;
};

struct ml_slot_chunk {
  ml_u16 backend[ML_SLOTS_PER_CHUNK]; /* index into the frontend's backends */
};

/* What connect/sendmsg rewrote for a socket, per backend it was sent to, so
 * getpeername/recvmsg can show the VIP that backend stands for (a UDP socket may talk to
 * several VIPs). */
struct ml_connect_key {
  ml_u64 cookie; /* socket cookie */
  struct ml_addr backend;
  ml_u16 backend_port;
  ml_u16 pad;
  ml_u32 pad2;
};
struct ml_connect_record {
  struct ml_addr vip;
  ml_u16 vip_port;
  ml_u16 pad;
  ml_u32 pad2;
};

/* Which build of the programs is pinned: the SHA-256 of the BPF object. A newer agent
 * replaces programs whose digest differs (bpf_link_update), keeping the maps. */
struct ml_meta {
  ml_u8 object_sha256[32];
  ml_u32 layout_version;
  ml_u32 links_current; /* 1: the cgroup links run this object's programs (0 while an
                           agent that replaced the load balancer's maps has not yet filled
                           them and swapped the programs in) */
};

/* ---- L4 authorization of pod-local traffic (issue 16) ------------------------------
 *
 * The compiled policy tables (control/policy_tables.h) as maps, twice: every key carries
 * the set (0 or 1) it belongs to, and ml_policy_active names the set programs read. The
 * writer fills the inactive set whole, flips ml_policy_active, waits for running programs
 * (a grace period) and only then clears the old set, so no program ever reads a
 * half-written table. The limits are control/policy_limits.h's. */
#define ML_POLICY_SETS 2
#define ML_MAX_POLICY_NETNS 65536      /* pods with a network namespace, per set */
#define ML_MAX_POLICY_PODS 131072      /* pod addresses with a policy class, per set */
#define ML_MAX_POLICY_CLASSES 65536    /* class ids are 16-bit */
#define ML_MAX_POLICY_PORTS (1 << 18)
#define ML_MAX_POLICY_IDENTITIES (1 << 20)
#define ML_MAX_POLICY_ADDRESSES (1 << 16)
#define ML_MAX_POLICY_VERDICTS (1 << 20)
#define ML_MAX_POLICIES 16384
/* Denial counter slots per set: two reasons per policy, and a last pair for denials no
 * policy names. */
#define ML_POLICY_DENY_SLOTS (2 * (ML_MAX_POLICIES + 1))
#define ML_NO_POLICY_INDEX 0xffffffffu
#define ML_REASON_DENY_RULE 3     /* policy_reason::deny_rule */
#define ML_REASON_NO_ALLOW_MATCH 4 /* policy_reason::no_allow_match */

/* The source: a pod's network namespace (bpf_get_netns_cookie) -> who it is. */
struct ml_policy_netns_key {
  ml_u64 cookie;
  ml_u32 set;
  ml_u32 pad;
};
struct ml_policy_source {
  ml_u32 identity;
  ml_u32 has_ip6;
  struct ml_addr ip;  /* IPv4-mapped */
  struct ml_addr ip6;
};

/* The destination: a pod address of this node -> its policy class (absent: class 0,
 * every flow allowed). */
struct ml_policy_pod_key {
  struct ml_addr ip;
  ml_u32 set;
  ml_u32 pad;
};

/* ml_policy_classes[set * ML_MAX_POLICY_CLASSES + class]; control/policy_tables.h's
 * policy_class without the address-length list (the LPM trie replaces it). */
struct ml_policy_class {
  ml_u32 first_verdict;
  ml_u16 port_groups;
  ml_u16 identity_groups;
  ml_u16 address_groups;
  ml_u16 none_identity_group;
  ml_u16 unknown_identity_group;
  ml_u16 pad;
};

/* ml_policy_ports key: set << 32 | class << 16 | port; value: the port group (u32). */
struct ml_policy_identity_key {
  ml_u32 set_class; /* set << 16 | class */
  ml_u32 identity;
};

/* The source-address LPM trie: prefixlen counts the 32 scope bits, then the address bits
 * (IPv4 in addr[0..3], IPv6 in all 16). scope = set << 24 | family << 16 | class, family 4
 * or 6, so a class's IPv4 and IPv6 blocks never match each other's addresses. */
struct ml_policy_address_key {
  ml_u32 prefixlen;
  ml_u32 scope;
  ml_u8 addr[16];
};

/* ml_policy_verdicts[set * ML_MAX_POLICY_VERDICTS + index]: policy_verdict's 8 bytes. */
struct ml_policy_verdict {
  ml_u8 allowed;
  ml_u8 reason; /* policy_reason */
  ml_u16 rule;
  ml_u32 policy; /* index into the set's policy names, or ML_NO_POLICY_INDEX */
};

/* Per-CPU counters; the loader sums them across CPUs. */
struct ml_counters {
  ml_u64 redirected_messages;
  ml_u64 redirected_bytes;
  ml_u64 passed_messages; /* sk_msg on a tracked socket that took TCP */
  ml_u64 passed_bytes;
  ml_u64 sockets_added;
  ml_u64 socket_add_failures;
  ml_u64 connect_rewrites;
  ml_u64 sendmsg_rewrites;
  ml_u64 peer_restores; /* getpeername/recvmsg answered with the VIP */
  ml_u64 services_without_backends; /* connects to a VIP that had no backend */
  ml_u64 socket_collisions;   /* an insert found its key taken (BPF_NOEXIST) */
  ml_u64 sockets_not_redirected; /* pod pairs whose redirect is off (mode, label) */
  ml_u64 sockets_early_payload;  /* payload moved before establishment (TCP Fast Open) */
  ml_u64 directions_to_tcp; /* a direction whose peer was not there: TCP for good */
  ml_u64 policy_denied_connects;  /* connect4/6 refused by policy (EPERM) */
  ml_u64 policy_denied_datagrams; /* sendmsg4/6 refused by policy (EPERM) */
};

#endif /* MESHLANE_EBPF_MAP_LAYOUT_H */
