#include "control/status_page.h"

#include "control/prometheus_text.h"
#include "control/version.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>
#include <set>

namespace meshlane {

const std::string& status_page_html() {
  static const std::string html = R"HTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>meshlane agent</title>
<style>
 body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
 h1{font-size:1.4em;margin:0 0 .3em} h2{font-size:1.1em;margin:1.2em 0 .4em}
 table{border-collapse:collapse;background:#fff} td,th{border:1px solid #ddd;padding:2px 8px;text-align:left}
 td.n{text-align:right;font-variant-numeric:tabular-nums} .bar{background:#4a90d9;height:10px;display:inline-block}
 .ok{color:#080} .bad{color:#b00} .lvl-error{color:#b00} .lvl-warn{color:#a60} #summary span{margin-right:1.5em}
 .cols{display:flex;gap:2em;flex-wrap:wrap}
</style></head><body>
<h1>meshlane agent</h1>
<div id="summary"><span>version <b id="version">?</b></span><span>generation <b id="generation">?</b></span>
<span>uptime <b id="uptime">?</b> s</span><span>state <b id="ready">?</b></span>
<span>refreshes <b id="refreshes">0</b></span><span id="fetch-error" class="bad"></span></div>
<div class="cols">
<div><h2>Services and backends</h2>
<p><input id="search" placeholder="name or VIP contains..." size="28"> <button id="previous">&lt;</button>
<span id="service-page">?</span> <button id="next">&gt;</button></p>
<table id="services"><thead><tr><th>service</th><th>backend</th><th>node</th><th>weight</th>
<th>Maglev share</th><th>packets</th><th>traffic share</th></tr></thead><tbody></tbody></table></div>
<div><h2>Recent errors</h2><table id="errors"><thead><tr><th>time</th><th>level</th><th>message</th></tr></thead><tbody></tbody></table>
<h2>Log</h2><table id="log"><thead><tr><th>time</th><th>level</th><th>message</th></tr></thead><tbody></tbody></table></div>
</div>
<div id="dataplane" hidden><h2>Ports</h2>
<table id="ports"><thead><tr><th>port</th><th>role</th><th>link</th><th>rings RX / TX</th><th>received</th><th>sent</th>
<th>TCP segments and UDP datagrams sent merged / GSO packets</th><th>segments received split / GSO packets</th>
<th>RX missed (ring full)</th><th>RX errors</th><th>TX errors</th><th>RX no mbuf</th><th>kernel interface RX / TX dropped</th></tr></thead><tbody></tbody></table>
<p>frames a full TX queue did not take (dropped, counted as tx_full): <b id="tx-full">?</b></p></div>
<div id="ebpf" hidden><h2>eBPF fast path</h2>
<p>redirect mode <b id="redirect-mode">?</b>, in effect <b id="redirect-effective">?</b> <span id="redirect-reason"></span></p>
<table id="kernel-checks"><thead><tr><th>kernel check</th><th>result</th><th>what was seen</th></tr></thead><tbody></tbody></table></div>
<div id="encryption" hidden><h2>Encrypted routes (ESP)</h2>
<p>mode <b id="esp-mode">?</b>, engine <b id="esp-engine">?</b>, <b id="esp-peers">?</b> encrypted peers,
replay window <b id="esp-window">?</b></p>
<table id="sas"><thead><tr><th>peer</th><th>direction</th><th>key id</th><th>epoch</th><th>SPI</th><th>sequence</th>
<th>packets</th><th>bytes</th><th>auth failures</th><th>replays</th></tr></thead><tbody></tbody></table></div>
<div id="denials" hidden><h2>Policy denials (sampled)</h2>
<p>denials not in this sample (at most 10 a second per worker are kept): <b id="denials-not-logged">?</b></p>
<table id="denial-rows"><thead><tr><th>time</th><th>direction</th><th>source</th><th>source identity</th>
<th>destination</th><th>destination identity</th><th>policy</th><th>rule</th><th>reason</th></tr></thead><tbody></tbody></table></div>
<h2>Live counters</h2>
<p>rows of services on other pages of the services table, not listed: <b id="counters-elsewhere">0</b></p>
<table id="counters"><thead><tr><th>metric</th><th>labels</th><th>value</th><th>per second</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
let refreshes = 0, previous = null, offset = 0, search = "";
const pageSize = 50;
document.getElementById("search").addEventListener("input", e => { search = e.target.value; offset = 0; });
document.getElementById("previous").addEventListener("click", () => { offset = Math.max(0, offset - pageSize); });
document.getElementById("next").addEventListener("click", () => { offset += pageSize; });
function cell(row, text, cls) { const td = row.insertCell(); td.textContent = text; if (cls) td.className = cls; return td; }
function pct(x) { return x === null || x === undefined ? "-" : (100 * x).toFixed(1) + " %"; }
function fmt(x) { return x === null ? "-" : (Number.isInteger(x) ? String(x) : x.toFixed(3)); }
function time(t) { return new Date(t * 1000).toISOString().substring(11, 19); }
function fill(id, rows, render) {
  const body = document.querySelector("#" + id + " tbody");
  const fresh = document.createElement("tbody");
  for (const r of rows) render(fresh.insertRow(), r);
  body.replaceWith(fresh);
}
function lines(id, rows) {
  fill(id, rows.slice().reverse(), (row, l) => { cell(row, time(l.time)); cell(row, l.level, "lvl-" + l.level); cell(row, l.message); });
}
async function refresh() {
  try {
    const query = "?offset=" + offset + "&limit=" + pageSize + "&search=" + encodeURIComponent(search);
    const response = await fetch("/status.json" + query, {cache: "no-store"});
    const m = await response.json();
    if (offset >= m.services_matching && offset > 0) offset = Math.max(0, m.services_matching - pageSize);
    document.getElementById("service-page").textContent = m.services_matching === 0 ? "no services" :
      (m.services_offset + 1) + "-" + Math.min(m.services_offset + pageSize, m.services_matching) + " of " + m.services_matching +
      (search ? " matching (" + m.services_total + " in all)" : "");
    document.getElementById("version").textContent = m.version;
    document.getElementById("generation").textContent = m.generation;
    document.getElementById("uptime").textContent = m.uptime_seconds.toFixed(0);
    const ready = document.getElementById("ready");
    ready.textContent = m.ready ? "ready" : "not ready: " + m.not_ready.join("; ");
    ready.className = m.ready ? "ok" : "bad";
    const rows = [];
    for (const s of m.services) {
      if (s.backends.length === 0) rows.push({s, b: null});
      for (const b of s.backends) rows.push({s, b});
    }
    fill("services", rows, (row, {s, b}) => {
      cell(row, s.name + " " + s.vip + " " + s.ports.join(","));
      if (!b) { cell(row, "(no backends)"); return; }
      cell(row, b.address); cell(row, b.node); cell(row, b.weight, "n");
      const share = cell(row, "", "n");
      const bar = document.createElement("span"); bar.className = "bar"; bar.style.width = (60 * b.maglev_share) + "px";
      share.append(bar, " " + pct(b.maglev_share));
      cell(row, fmt(b.packets), "n"); cell(row, pct(b.traffic_share), "n");
    });
    if (m.dataplane) {
      document.getElementById("dataplane").hidden = false;
      fill("ports", m.dataplane.ports, (row, p) => {
        cell(row, p.interface); cell(row, p.role); cell(row, p.link_up ? "up" : "down", p.link_up ? "ok" : "bad");
        cell(row, fmt(p.rx_ring) + " / " + fmt(p.tx_ring), "n");
        cell(row, fmt(p.rx_packets), "n"); cell(row, fmt(p.tx_packets), "n");
        // A pod port that merges TCP segments and UDP datagrams into GSO packets (dataplane.pod_gro).
        if (p.tx_merged_segments === null || p.tx_merged_segments === undefined) cell(row, "-", "n");
        else cell(row, fmt(p.tx_merged_segments) + " / " + fmt(p.tx_merged_packets), "n");
        // A pod port that takes its pod's GSO packets and splits them (gso_split.h).
        if (p.rx_split_segments === null || p.rx_split_segments === undefined) cell(row, "-", "n");
        else cell(row, fmt(p.rx_split_segments) + " / " + fmt(p.rx_split_packets), "n");
        for (const k of ["rx_missed", "rx_errors", "tx_errors", "rx_nombuf"]) cell(row, fmt(p[k]), p[k] > 0 ? "n bad" : "n");
        if (p.kernel_rx_dropped === null || p.kernel_rx_dropped === undefined) cell(row, "(no kernel interface)", "n");
        else cell(row, fmt(p.kernel_rx_dropped) + " / " + fmt(p.kernel_tx_dropped),
                  p.kernel_rx_dropped + p.kernel_tx_dropped > 0 ? "n bad" : "n");
      });
      let txFull = 0;
      for (const c of m.counters)
        if (c.name === "meshlane_dataplane_drops_total" && c.labels.includes("reason=tx_full")) txFull += c.value;
      const full = document.getElementById("tx-full");
      full.textContent = fmt(txFull); full.className = txFull > 0 ? "bad" : "";
    }
    if (m.ebpf) {
      document.getElementById("ebpf").hidden = false;
      document.getElementById("redirect-mode").textContent = m.ebpf.redirect.mode;
      document.getElementById("redirect-effective").textContent = m.ebpf.redirect.effective + " (" + m.ebpf.redirect.pods + " pods)";
      document.getElementById("redirect-reason").textContent = m.ebpf.redirect.reason ? "(" + m.ebpf.redirect.reason + ")" : "";
      const checks = Object.entries(m.ebpf.kernel_check.checks || {});
      if (!m.ebpf.kernel_check.ran) checks.push(["(not run)", {passed: false, detail: m.ebpf.kernel_check.error}]);
      fill("kernel-checks", checks, (row, [name, c]) => {
        cell(row, name); cell(row, c.passed ? "as a kernel socket" : "differs", c.passed ? "ok" : "bad"); cell(row, c.detail);
      });
    }
    if (m.encryption) {
      const e = m.encryption;
      document.getElementById("encryption").hidden = false;
      document.getElementById("esp-mode").textContent = e.mode;
      document.getElementById("esp-engine").textContent = e.engine;
      document.getElementById("esp-peers").textContent = e.encrypted_peers;
      document.getElementById("esp-window").textContent = e.replay_window;
      fill("sas", e.sas || [], (row, sa) => {
        cell(row, sa.peer + " " + sa.peer_ip); cell(row, sa.direction); cell(row, sa.key_id, "n"); cell(row, sa.epoch, "n"); cell(row, sa.spi);
        cell(row, String(sa.sequence), "n"); cell(row, fmt(sa.packets), "n"); cell(row, fmt(sa.bytes), "n");
        cell(row, sa.auth_failures === null ? "-" : fmt(sa.auth_failures), "n");
        cell(row, sa.replays === null ? "-" : fmt(sa.replays), "n");
      });
    }
    if (m.policy_denials) {
      document.getElementById("denials").hidden = false;
      document.getElementById("denials-not-logged").textContent = m.policy_denials.not_logged;
      fill("denial-rows", m.policy_denials.rows.slice().reverse(), (row, d) => {
        cell(row, new Date(d.time_ms).toISOString().substring(11, 23)); cell(row, d.direction);
        cell(row, d.protocol + " " + d.source + ":" + d.source_port); cell(row, d.source_identity);
        cell(row, d.destination + ":" + d.destination_port); cell(row, d.destination_identity);
        cell(row, d.policy); cell(row, d.rule, "n"); cell(row, d.reason);
      });
    }
    const dt = previous ? m.time - previous.time : 0;
    const before = new Map();
    if (previous) for (const c of previous.counters) before.set(c.name + "{" + c.labels + "}", c.value);
    document.getElementById("counters-elsewhere").textContent = fmt(m.counters_of_other_pages || 0);
    fill("counters", m.counters, (row, c) => {
      cell(row, c.name); cell(row, c.labels); cell(row, fmt(c.value), "n value");
      const old = before.get(c.name + "{" + c.labels + "}");
      const rate = c.kind === "counter" && dt > 0 && old !== undefined && c.value !== null ? (c.value - old) / dt : null;
      cell(row, rate === null ? "" : rate.toFixed(2), "n rate");
    });
    lines("errors", m.errors);
    lines("log", m.log);
    previous = m;
    document.getElementById("refreshes").textContent = ++refreshes;
    document.getElementById("fetch-error").textContent = "";
  } catch (e) {
    document.getElementById("fetch-error").textContent = "agent unreachable: " + e;
  }
  setTimeout(refresh, 1000);
}
refresh();
</script></body></html>
)HTML";
  return html;
}

namespace {

std::string url_decoded(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '+') {
      out += ' ';
    } else if (text[i] == '%' && i + 2 < text.size() && std::isxdigit(static_cast<unsigned char>(text[i + 1])) &&
               std::isxdigit(static_cast<unsigned char>(text[i + 2]))) {
      out += static_cast<char>(std::stoi(std::string(text.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else {
      out += text[i];
    }
  }
  return out;
}

}  // namespace

nlohmann::json status_page_model(control_module& control, const status_page_view& view) {
  using nlohmann::json;
  const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  json model = {{"version", kVersion}, {"uptime_seconds", control.uptime_seconds()}, {"time", now}};
  const auto tables = control.publisher().current();
  model["generation"] = tables ? tables->generation : 0;
  const auto waiting = control.registry().not_ready();
  model["ready"] = tables != nullptr && waiting.empty();
  model["not_ready"] = waiting;

  // Services a page at a time (the page refreshes every second; a 100k-service node
  // must not send them all), optionally those whose name or VIP contains `search`.
  std::vector<size_t> page;  // indices into tables->services
  collect_scope::service_set on_page;
  size_t matching = 0;
  for (size_t s = 0; tables && s < tables->services.size(); ++s) {
    const auto& svc = tables->services[s];
    if (!view.search.empty() && svc.name.find(view.search) == std::string::npos &&
        svc.vip.to_string().find(view.search) == std::string::npos)
      continue;
    if (matching++ < view.offset || page.size() >= view.limit) continue;
    page.push_back(s);
    on_page.insert(svc.name);
  }

  // Every counter and gauge, one row per sample; and per-backend traffic when a subsystem
  // reports it (meshlane_<subsystem>_backend_packets_total{service,backend="ip:port"}).
  // Rows labelled with a service of the tables are kept for the services on this page
  // only, and the collectors that keep series per service do not make the others
  // (collect_scope): at 100,000 services of 16 backends those are millions.
  const collect_scope scope(&on_page);
  const std::vector<metric_family> families = control.registry().collect(scope);
  std::map<std::string, double> backend_packets;
  for (const auto& family : families) {
    // Any subsystem's per-backend packet family counts, e.g. the DPDK workers'
    // meshlane_dataplane_backend_packets_total{service,backend="ip:port"}.
    const std::string_view suffix = "_backend_packets_total";
    const bool is_backend_packets = family.name.size() > suffix.size() &&
                                    family.name.compare(family.name.size() - suffix.size(), suffix.size(), suffix) == 0;
    if (!is_backend_packets) continue;
    for (const auto& sample : family.samples) {
      std::string service, backend;
      for (const auto& [k, v] : sample.labels) {
        if (k == "service") service = v;
        if (k == "backend") backend = v;
      }
      if (!backend.empty() && on_page.contains(service)) backend_packets[service + "|" + backend] += sample.value;
    }
  }
  // The fast path's redirect mode and what the kernel check found, when it runs.
  const json subsystems = control.registry().status();
  if (subsystems.contains("ebpf")) model["ebpf"] = subsystems["ebpf"];
  // Encrypted routes (issue 15): the mode, engine and SAs, never a key.
  if (subsystems.contains("dataplane") && subsystems["dataplane"].contains("encryption")) {
    model["encryption"] = subsystems["dataplane"]["encryption"];
    const auto names = control.registry().query_names();
    if (std::find(names.begin(), names.end(), "sas") != names.end()) {
      const json sas = control.registry().query("sas", {{"offset", 0}, {"limit", 64}});
      if (sas.is_object() && sas.contains("rows")) model["encryption"]["sas"] = sas["rows"];
    }
  }
  // The pipeline's sampled policy denials (issue 16), newest last.
  if (const json denials = control.policy_denials_after(0); denials.is_object()) {
    json rows = denials.value("rows", json::array());
    if (rows.size() > 20) rows.erase(rows.begin(), rows.end() - 20);
    model["policy_denials"] = {{"rows", rows}, {"not_logged", denials.value("suppressed", 0)}};
  }
  // The DPDK ports with what their drivers lost (RX ring overruns, errors, no mbuf).
  if (subsystems.contains("dataplane") && subsystems["dataplane"].contains("ports"))
    model["dataplane"] = {{"ports", subsystems["dataplane"]["ports"]}};

  json services = json::array();
  if (tables) {
    const double m = tables->tuning.maglev_table_size;
    for (const size_t s : page) {
      const auto& svc = tables->services[s];
      double service_packets = 0;
      for (uint32_t b = 0; b < svc.backend_count; ++b) {
        const auto& be = svc.compiled->backends[b];
        auto it = backend_packets.find(svc.name + "|" + be.ip.to_string() + ":" + std::to_string(be.port));
        if (it != backend_packets.end()) service_packets += it->second;
      }
      json backends = json::array();
      for (uint32_t b = 0; b < svc.backend_count; ++b) {
        const auto& be = svc.compiled->backends[b];
        const std::string address = be.ip.to_string() + ":" + std::to_string(be.port);
        auto it = backend_packets.find(svc.name + "|" + address);
        const double packets = it == backend_packets.end() ? 0 : it->second;
        backends.push_back({{"address", address}, {"node", tables->nodes.at(be.node_index).name},
                            {"weight", be.weight}, {"maglev_share", be.maglev_slots / m},
                            {"packets", packets},
                            {"traffic_share", service_packets > 0 ? json(packets / service_packets) : json(nullptr)}});
      }
      json ports = json::array();
      for (uint32_t i = 0; i < svc.frontend_count; ++i)
        ports.push_back(frontend_text(tables->frontends[tables->service_frontends[svc.first_frontend + i]]));
      services.push_back({{"name", svc.name}, {"vip", svc.vip.to_string()}, {"ports", ports},
                          {"packets", service_packets}, {"backends", backends}});
    }
  }
  // Whether `name` is a service of the tables (sorted by name) not on this page.
  auto on_another_page = [&](const std::string& name) {
    if (!tables || on_page.contains(name)) return false;
    size_t low = 0, high = tables->services.size();
    while (low < high) {
      const size_t mid = (low + high) / 2;
      if (tables->services[mid].name < name) low = mid + 1;
      else high = mid;
    }
    return low < tables->services.size() && tables->services[low].name == name;
  };
  json counters = json::array();
  size_t counters_on_other_pages = 0;
  for (const auto& family : families) {
    for (const auto& sample : family.samples) {
      std::string labels;
      bool elsewhere = false;
      for (const auto& [k, v] : sample.labels) {
        labels += (labels.empty() ? "" : ",") + k + "=" + v;
        if (k == "service" && on_another_page(v)) elsewhere = true;
      }
      if (elsewhere) {
        ++counters_on_other_pages;
        continue;
      }
      counters.push_back({{"name", family.name}, {"labels", labels},
                          {"kind", family.kind == metric_kind::counter ? "counter" : "gauge"},
                          {"value", std::isfinite(sample.value) ? json(sample.value) : json(nullptr)}});
    }
  }
  model["counters"] = counters;
  model["counters_of_other_pages"] = counters_on_other_pages + scope.samples_left_out();
  model["services_total"] = tables ? tables->services.size() : 0;
  model["services_matching"] = matching;
  model["services_offset"] = view.offset;
  model["services_limit"] = view.limit;
  model["services"] = services;

  json lines = json::array(), errors = json::array();
  for (const auto& line : control.log().recent(50))
    lines.push_back({{"time", line.unix_seconds}, {"level", to_string(line.level)}, {"message", line.message}});
  for (const auto& line : control.log().recent(20, log_level::warn))
    errors.push_back({{"time", line.unix_seconds}, {"level", to_string(line.level)}, {"message", line.message}});
  model["log"] = lines;
  model["errors"] = errors;
  return model;
}

// offset=N&limit=N&search=TEXT; what does not parse keeps its default, limit is 1..500.
status_page_view status_view_from_query(std::string_view query) {
  status_page_view view;
  while (!query.empty()) {
    const size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    const size_t eq = pair.find('=');
    if (eq == std::string_view::npos) continue;
    const std::string_view key = pair.substr(0, eq);
    const std::string value = url_decoded(pair.substr(eq + 1));
    char* end = nullptr;
    const unsigned long number = std::strtoul(value.c_str(), &end, 10);
    const bool numeric = !value.empty() && *end == '\0';
    if (key == "offset" && numeric) view.offset = number;
    if (key == "limit" && numeric) view.limit = std::clamp<unsigned long>(number, 1, 500);
    if (key == "search") view.search = value.substr(0, 256);
  }
  return view;
}

void add_agent_routes(http_server& server, control_module& control, http_route_kind heavy) {
  // /metrics and /status.json grow with the cluster (millions of samples at 100,000
  // services of 16 backends): computed off the thread that answers the probes.
  server.route("/metrics", [&control](const http_request&) {
    ++control.http_requests;
    std::vector<std::string> problems;
    http_response response{200, kPrometheusContentType,
                           format_prometheus_text(control.registry().collect(), &problems)};
    for (const auto& p : problems) control.log().write(log_level::error, "metrics: " + p);
    return response;
  }, heavy);
  server.route("/healthz", [&control](const http_request&) {
    ++control.http_requests;
    return http_response{200, "text/plain; charset=utf-8", "ok\n"};
  });
  server.route("/readyz", [&control](const http_request&) {
    ++control.http_requests;
    std::vector<std::string> waiting = control.registry().not_ready();
    if (waiting.empty()) return http_response{200, "text/plain; charset=utf-8", "ready\n"};
    std::string body = "not ready:\n";
    for (const auto& w : waiting) body += "  " + w + "\n";
    return http_response{503, "text/plain; charset=utf-8", body};
  });
  server.route("/status.json", [&control](const http_request& request) {
    ++control.http_requests;
    return http_response{200, "application/json",
                         status_page_model(control, status_view_from_query(request.query))
                             .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
  }, heavy);
  server.route("/", [&control](const http_request&) {
    ++control.http_requests;
    return http_response{200, "text/html; charset=utf-8", status_page_html()};
  });
}

}  // namespace meshlane
