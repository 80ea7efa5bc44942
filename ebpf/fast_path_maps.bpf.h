/* The fast path's maps. Written by the control module (ebpf/fast_path.h), read here. */
#ifndef MESHLANE_FAST_PATH_MAPS_BPF_H
#define MESHLANE_FAST_PATH_MAPS_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "ebpf/map_layout.h"

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, ML_MAX_LOCAL_PODS);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct ml_addr);
  __type(value, struct ml_pod_value);
} ml_local_pods SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_SOCKHASH);
  __uint(max_entries, ML_MAX_SOCKETS);
  __type(key, struct ml_sock_key);
  __type(value, __u64);
} ml_sock_hash SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_SK_STORAGE);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, int);
  __type(value, struct ml_sock_state);
} ml_sock_state SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, ML_MAX_SERVICES);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct ml_service_key);
  __type(value, struct ml_service_value);
} ml_services SEC(".maps");

/* The regions ml_services entries point to. Mappable: the writer fills a fresh region
 * through its own mapping of the array (plain stores, no system call per element), then
 * points an ml_services entry at it (ebpf/fast_path.cpp, sync). */
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, ML_MAX_BACKENDS);
  __uint(map_flags, BPF_F_MMAPABLE);
  __type(key, __u32);
  __type(value, struct ml_backend);
} ml_backends SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, ML_MAX_SLOT_CHUNKS);
  __uint(map_flags, BPF_F_MMAPABLE);
  __type(key, __u32);
  __type(value, struct ml_slot_chunk);
} ml_slots SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_LRU_HASH);
  __uint(max_entries, ML_MAX_CONNECT_RECORDS);
  __type(key, struct ml_connect_key);
  __type(value, struct ml_connect_record);
} ml_connect_records SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct ml_meta);
} ml_meta SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct ml_counters);
} ml_counters SEC(".maps");

/* ---- L4 authorization (map_layout.h): two sets, ml_policy_active names the live one. */
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, __u32);
} ml_policy_active SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, ML_POLICY_SETS * ML_MAX_POLICY_NETNS);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct ml_policy_netns_key);
  __type(value, struct ml_policy_source);
} ml_policy_netns SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, ML_POLICY_SETS * ML_MAX_POLICY_PODS);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct ml_policy_pod_key);
  __type(value, __u32);
} ml_policy_pods SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, ML_POLICY_SETS * ML_MAX_POLICY_CLASSES);
  __type(key, __u32);
  __type(value, struct ml_policy_class);
} ml_policy_classes SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, ML_POLICY_SETS * ML_MAX_POLICY_PORTS);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, __u64);
  __type(value, __u32);
} ml_policy_ports SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, ML_POLICY_SETS * ML_MAX_POLICY_IDENTITIES);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct ml_policy_identity_key);
  __type(value, __u32);
} ml_policy_identities SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_LPM_TRIE);
  __uint(max_entries, ML_POLICY_SETS * ML_MAX_POLICY_ADDRESSES);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct ml_policy_address_key);
  __type(value, __u32);
} ml_policy_addresses SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, ML_POLICY_SETS * ML_MAX_POLICY_VERDICTS);
  __type(key, __u32);
  __type(value, struct ml_policy_verdict);
} ml_policy_verdicts SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, ML_POLICY_SETS * ML_POLICY_DENY_SLOTS);
  __type(key, __u32);
  __type(value, __u64);
} ml_policy_denials SEC(".maps");

/* Sockets of the pods that connected (TCP, or UDP connect), marked at connect: the ones
 * the policy reaper re-checks after a policy change (an accepted socket is never one). */
struct {
  __uint(type, BPF_MAP_TYPE_SK_STORAGE);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, int);
  __type(value, __u32);
} ml_policy_initiators SEC(".maps");

static __always_inline struct ml_counters* counters(void) {
  __u32 zero = 0;
  return bpf_map_lookup_elem(&ml_counters, &zero);
}

#endif
