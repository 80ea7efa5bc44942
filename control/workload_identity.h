// Workload identities (issue 16): who a pod is, as a name and as a number.
//
// A workload's principal is spiffe://<trust_domain>/ns/<namespace>/sa/<service account>
// (the SPIFFE ID Istio gives it). Its number is a 32-bit hash of that principal, so every
// node derives the same number from its own document, with no allocator to agree with.
// Numbers below kFirstWorkloadIdentity are reserved: 0 is "no identity" (a source that
// proved nothing: unknown, or a packet without an authenticated identity), 1 the node
// itself, 2 the world outside the cluster. A hash that lands there is moved up (still a
// function of the principal alone); two principals of one document with the same number
// are refused at validation (a 32-bit hash makes that rare: about one document in 86 with
// 10,000 identities).
//
// Why a number of the whole principal, and how a node matches what it cannot see: a
// source on another node arrives as a number only (the Geneve option, DESIGN.md). The
// number is not split into namespace and account parts, because 16 bits of namespace
// would collide in clusters of a few hundred namespaces. Instead the document carries the
// cluster's namespaces and service accounts (`namespaces`, what the Kubernetes glue lists),
// so every node holds the catalog of all identities (number -> namespace, account) and
// matches `principals` wildcards and `namespaces` against it. A number a node's catalog
// lacks (an account created after its last document) is still authenticated: it matches
// `principals: ["*"]` and is known to differ from every principal listed exactly; whatever
// else cannot be decided for it is decided against the flow (policy_evaluator.h).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace meshlane {

struct desired_state;
struct config_error;

inline constexpr uint32_t kIdentityNone = 0;   // unauthenticated / unknown
inline constexpr uint32_t kIdentityHost = 1;   // the node itself
inline constexpr uint32_t kIdentityWorld = 2;  // outside the cluster (ingress)
inline constexpr uint32_t kFirstWorkloadIdentity = 256;

inline constexpr const char* kDefaultTrustDomain = "cluster.local";
inline constexpr const char* kDefaultNamespace = "default";
inline constexpr const char* kDefaultServiceAccount = "default";

// spiffe://<trust_domain>/ns/<ns>/sa/<sa>
std::string spiffe_principal(std::string_view trust_domain, std::string_view ns,
                             std::string_view sa);
// The number of a principal (the whole spiffe:// string); >= kFirstWorkloadIdentity.
uint32_t identity_number(std::string_view principal);
// True for 0, 1, 2 and the rest of the reserved range: sources without a workload identity.
inline bool is_reserved_identity(uint32_t number) {
  return number < kFirstWorkloadIdentity;
}
const char* reserved_identity_name(uint32_t number);  // "none", "host", "world", "reserved"

struct principal_parts {
  std::string trust_domain, ns, sa;
};
// Splits spiffe://td/ns/X/sa/Y; nullopt for anything else.
std::optional<principal_parts> parse_principal(std::string_view principal);

struct workload_identity {
  uint32_t number = 0;
  std::string ns, sa;
  std::string principal;
};

// Every identity a document names (its namespaces' service accounts, each namespace's
// "default", its pods' accounts, principals its policies list exactly), by number.
class identity_catalog {
 public:
  // Builds the catalog of a document; collisions (two principals, one number) are
  // reported in `errors` with the JSON paths of both, when `errors` is given.
  static identity_catalog of(const desired_state& state,
                             std::vector<config_error>* errors = nullptr);

  const workload_identity* find(uint32_t number) const;
  const std::vector<workload_identity>& all() const { return sorted_; }  // by number
  bool knows_namespace(std::string_view ns) const;

 private:
  std::vector<workload_identity> sorted_;
  std::vector<std::string> namespaces_;  // sorted
};

}  // namespace meshlane
