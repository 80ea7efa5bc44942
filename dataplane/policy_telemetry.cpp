// What the control thread reads of the pipeline's L4 authorization (issue 16): the deny
// counters by policy name (slots: pipeline.h policy_slot_names) and the sampled deny log.
#include <rte_cycles.h>

#include <algorithm>
#include <chrono>

#include "control/workload_identity.h"
#include "dataplane/dataplane.h"

namespace meshlane {

namespace {
const char* reason_label(unsigned reason) { return reason == 0 ? "deny_rule" : "no_allow_match"; }

std::string identity_text(uint32_t identity) {
  if (is_reserved_identity(identity)) return reserved_identity_name(identity);
  return std::to_string(identity);
}
}  // namespace

void worker_pool::policy_denials(std::vector<policy_deny_count>& out) const {
  const std::shared_ptr<const published_names> published = this->names();  // the last install's
  const std::vector<std::string>& names = published->policies;
  for (uint32_t slot = 0; slot < names.size(); ++slot) {
    for (unsigned reason = 0; reason < 2; ++reason) {
      for (unsigned direction = 0; direction < 2; ++direction) {
        uint64_t sum = 0;
        for (const auto& w : workers_) sum += w->policy_denied->by[slot][reason][direction].get();
        if (!sum) continue;
        out.push_back({names[slot], reason_label(reason),
                       direction == 0 ? policy_direction::remote : policy_direction::ingress, sum});
      }
    }
  }
}

std::vector<nlohmann::json> worker_pool::take_deny_events(std::vector<uint64_t>& cursor, uint64_t& lost) const {
  std::vector<std::pair<uint64_t, nlohmann::json>> events;  // by TSC
  cursor.resize(workers_.size(), 0);
  const std::shared_ptr<const published_names> published = this->names();  // the last install's
  const std::vector<std::string>& names = published->policies;
  const uint64_t hz = rte_get_tsc_hz();
  const uint64_t now = rte_rdtsc();
  const auto wall_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
  for (size_t i = 0; i < workers_.size(); ++i) {
    const policy_deny_log& log = workers_[i]->deny_log;
    const uint64_t written = log.written.load(std::memory_order_acquire);
    uint64_t& next = cursor[i];
    if (written - next > policy_deny_log::kSize) {
      lost += written - next - policy_deny_log::kSize;
      next = written - policy_deny_log::kSize;
    }
    for (; next < written; ++next) {
      const policy_deny_event e = log.events[next % policy_deny_log::kSize];
      // Rewritten while we copied it: the worker has gone a whole ring further.
      if (log.written.load(std::memory_order_acquire) - next > policy_deny_log::kSize) {
        ++lost;
        continue;
      }
      const char* protocol = e.protocol == 6 ? "tcp" : e.protocol == 17 ? "udp" : "icmp";
      const int64_t time_ms = wall_ms - static_cast<int64_t>(hz ? (now - e.tsc) * 1000 / hz : 0);
      if (e.egress_refused) {
        // A refused outbound flow (egress_snat.h egress_refuse): no policy, no verdict.
        events.emplace_back(e.tsc, nlohmann::json{
                                       {"time_ms", time_ms},
                                       {"worker", i},
                                       {"direction", "egress"},
                                       {"protocol", protocol},
                                       {"source", e.source.to_string()},
                                       {"source_port", e.source_port},
                                       {"destination", e.destination.to_string()},
                                       {"destination_port", e.destination_port},
                                       {"source_identity", ""},  // same columns as a policy row's
                                       {"destination_identity", ""},
                                       {"policy", ""},
                                       {"rule", -1},
                                       {"reason", to_string(static_cast<drop_reason>(e.egress_refused))},
                                   });
        continue;
      }
      nlohmann::json row = {
          {"time_ms", time_ms},
          {"worker", i},
          {"direction", to_string(static_cast<policy_direction>(e.direction))},
          {"protocol", protocol},
          {"source", e.source.to_string()},
          {"source_port", e.source_port},
          {"destination", e.destination.to_string()},
          {"destination_port", e.destination_port},
          {"source_identity", identity_text(e.source_identity)},
          {"destination_identity", identity_text(e.destination_identity)},
          {"policy", e.policy_slot < names.size() ? names[e.policy_slot] : ""},
          {"rule", e.verdict.rule == kNoRuleIndex ? -1 : int{e.verdict.rule}},
          {"reason", to_string(e.verdict.reason)},
      };
      events.emplace_back(e.tsc, std::move(row));
    }
  }
  std::stable_sort(events.begin(), events.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<nlohmann::json> out;
  out.reserve(events.size());
  for (auto& e : events) out.push_back(std::move(e.second));
  return out;
}

nlohmann::json worker_pool::policy_denials_after(uint64_t after) {
  std::lock_guard lock(deny_feed_mutex_);
  for (nlohmann::json& event : take_deny_events(deny_cursor_, deny_lost_)) {
    event["seq"] = ++deny_feed_next_;
    deny_feed_.push_back(std::move(event));
    if (deny_feed_.size() > kDenyFeedSize) deny_feed_.pop_front();
  }
  nlohmann::json rows = nlohmann::json::array();
  for (const nlohmann::json& event : deny_feed_)
    if (event["seq"].get<uint64_t>() > after) rows.push_back(event);
  return {{"rows", rows}, {"next", deny_feed_next_}, {"suppressed", deny_log_suppressed()}, {"lost", deny_lost_}};
}

uint64_t worker_pool::deny_log_suppressed() const {
  uint64_t sum = 0;
  for (const auto& w : workers_) sum += w->deny_log.suppressed.get();
  return sum;
}

}  // namespace meshlane
