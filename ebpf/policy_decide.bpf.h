/* The L4 authorization verdict of the live policy set (issue 16), shared by the
 * connect/sendmsg programs (fast_path.bpf.c) and the policy reaper (policy_reaper.bpf.c),
 * so that a connection is closed on a policy change exactly when a new connect of it
 * would be refused. Needs the policy maps of fast_path_maps.bpf.h.
 *
 * The verdict is the compiled tables' (control/policy_tables.h): port group, identity
 * group, address group (an LPM trie), one verdict. */
#ifndef MESHLANE_POLICY_DECIDE_BPF_H
#define MESHLANE_POLICY_DECIDE_BPF_H

#include "ebpf/fast_path_maps.bpf.h"

static __always_inline __u32 policy_group(void* map, const void* key, __u32 absent) {
  __u32* group = bpf_map_lookup_elem(map, key);
  return group ? *group : absent;
}

/* The live set (ml_policy_active), or -1 when there is none. */
static __always_inline int policy_live_set(void) {
  __u32 zero = 0;
  __u32* active = bpf_map_lookup_elem(&ml_policy_active, &zero);
  return active ? (int)(*active & 1) : -1;
}

/* The verdict of set `set` for a flow from the pod whose network namespace has cookie
 * `netns_cookie` to `dest`:`port` (host order), `v6` when the flow is IPv6; null when no
 * policy class decides it (allowed). */
static __always_inline struct ml_policy_verdict* policy_decide(__u32 set, const struct ml_addr* dest, __u16 port,
                                                               __u64 netns_cookie, int v6) {
  struct ml_policy_pod_key pod = {};
  pod.ip = *dest;
  pod.set = set;
  __u32* class_id = bpf_map_lookup_elem(&ml_policy_pods, &pod);
  if (!class_id || *class_id == 0 || *class_id >= ML_MAX_POLICY_CLASSES) return 0;
  const __u32 class_key = set * ML_MAX_POLICY_CLASSES + *class_id;
  struct ml_policy_class* c = bpf_map_lookup_elem(&ml_policy_classes, &class_key);
  if (!c) return 0;

  const __u64 port_key = (__u64)set << 32 | (__u64)*class_id << 16 | port;
  const __u32 port_group = policy_group(&ml_policy_ports, &port_key, 0);

  struct ml_policy_netns_key netns = {};
  netns.cookie = netns_cookie;
  netns.set = set;
  struct ml_policy_source* source = bpf_map_lookup_elem(&ml_policy_netns, &netns);
  /* A process of the pods' cgroup in no known pod's namespace has no identity. */
  const __u32 identity = source ? source->identity : 0;
  __u32 identity_group;
  if (identity < 256) { /* the reserved range (control/workload_identity.h) */
    identity_group = c->none_identity_group;
  } else {
    struct ml_policy_identity_key identity_key = {};
    identity_key.set_class = set << 16 | *class_id;
    identity_key.identity = identity;
    identity_group = policy_group(&ml_policy_identities, &identity_key, c->unknown_identity_group);
  }

  __u32 address_group = 0;
  if (c->address_groups > 1 && source && (!v6 || source->has_ip6)) {
    struct ml_policy_address_key address_key = {};
    address_key.prefixlen = 32 + 128;
    address_key.scope = set << 24 | (v6 ? 6u : 4u) << 16 | *class_id;
    if (v6) __builtin_memcpy(address_key.addr, &source->ip6, 16);
    else __builtin_memcpy(address_key.addr, &source->ip.words[3], 4);
    address_group = policy_group(&ml_policy_addresses, &address_key, 0);
  }

  const __u32 index = c->first_verdict +
                      (port_group * c->identity_groups + identity_group) * c->address_groups + address_group;
  if (index >= ML_MAX_POLICY_VERDICTS) return 0;
  const __u32 verdict_key = set * ML_MAX_POLICY_VERDICTS + index;
  return bpf_map_lookup_elem(&ml_policy_verdicts, &verdict_key);
}

/* Counts a denial under its policy and reason in set `set`'s per-CPU slots. */
static __always_inline void policy_count_denial(__u32 set, const struct ml_policy_verdict* verdict) {
  const __u32 policy = verdict->policy < ML_MAX_POLICIES ? verdict->policy : ML_MAX_POLICIES;
  const __u32 slot = set * ML_POLICY_DENY_SLOTS + 2 * policy + (verdict->reason == ML_REASON_NO_ALLOW_MATCH);
  __u64* denials = bpf_map_lookup_elem(&ml_policy_denials, &slot);
  if (denials) *denials += 1; /* per-CPU entry: no other writer */
}

#endif
