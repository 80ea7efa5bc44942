#include "control/published_document.h"

#include "control/document_tape.h"

namespace meshlane {

using nlohmann::json;

shared_text share_text(std::string text) {
  struct holder {
    std::string bytes;
    std::string_view text;
  };
  auto held = std::make_shared<holder>();
  held->bytes = std::move(text);
  held->text = held->bytes;
  return shared_text(held, &held->text);
}

shared_text share_text(std::shared_ptr<const void> owner, std::string_view text) {
  struct holder {
    std::shared_ptr<const void> owner;
    std::string_view text;
  };
  auto held = std::make_shared<holder>(holder{std::move(owner), text});
  return shared_text(held, &held->text);
}

json published_document::replace(json document) {
  json previous = std::move(document_);
  document_ = std::move(document);
  pending_.reset();
  deferred_.clear();  // a whole document supersedes them
  services_.clear();
  pods_.clear();
  nodes_.clear();
  indexed_ = false;
  return previous;
}

json published_document::take_built(json built) {
  std::vector<json> deferred = std::move(deferred_);
  shared_text text = pending_;
  json previous = replace(std::move(built));
  try {
    for (const json& delta : deferred) apply(delta);
  } catch (...) {
    // No memory to apply them now: back to the text with every delta still waiting, so
    // that none is lost; whatever needs the DOM next builds it again.
    replace(json());
    pending_ = std::move(text);
    deferred_ = std::move(deferred);
    throw;
  }
  return previous;
}

json published_document::replace_text(shared_text text) {
  json previous = replace(json());
  pending_ = std::move(text);
  return previous;
}

json published_document::adopt(json built, const shared_text& from) {
  if (!pending_ || pending_ != from) return built;  // replaced meanwhile: not this document's
  return take_built(std::move(built));
}

json published_document::dom_of(std::string_view text) {
  auto read = document_tape::parse_json(text, document_tape::kMaxDocumentNesting);
  return read ? std::move(*read) : json::parse(text, nullptr, false);
}

void published_document::build_pending() {
  if (pending_) take_built(dom_of(*pending_));
}

const json& published_document::content() {
  build_pending();
  return document_;
}

json& published_document::section(const char* key, name_index& index) {
  json& list = document_[key];
  if (list.is_null()) list = json::array();
  if (!indexed_) {
    // One pass over every section on the first delta after a full apply.
    indexed_ = true;
    for (auto [k, i] : {std::pair<const char*, name_index*>{"services", &services_}, {"pods", &pods_}, {"nodes", &nodes_}}) {
      const json& entries = document_[k];
      if (!entries.is_array()) continue;
      for (size_t n = 0; n < entries.size(); ++n)
        if (entries[n].is_object() && entries[n].contains("name") && entries[n]["name"].is_string())
          i->emplace(entries[n]["name"].get<std::string>(), n);
    }
  }
  (void)index;
  return list;
}

void published_document::put(const char* key, name_index& index, const json& value) {
  json& list = section(key, index);
  const std::string name = value.at("name").get<std::string>();
  if (auto it = index.find(name); it != index.end()) {
    list[it->second] = value;
  } else {
    index.emplace(name, list.size());
    list.push_back(value);
  }
}

void published_document::erase(const char* key, name_index& index, const std::string& name) {
  json& list = section(key, index);
  auto it = index.find(name);
  if (it == index.end()) return;
  // Order in the document carries no meaning (tables are in canonical order), so the last
  // entry takes the removed one's place and nothing else moves.
  const size_t at = it->second;
  index.erase(it);
  if (at + 1 != list.size()) {
    list[at] = std::move(list.back());
    index[list[at]["name"].get<std::string>()] = at;
  }
  list.erase(list.size() - 1);
}

void published_document::patch(const json& delta) {
  if (pending_) {
    deferred_.push_back(delta);
    return;
  }
  apply(delta);
}

void published_document::apply(const json& delta) {
  if (document_.is_null()) return;
  for (const json& change : delta.at("changes")) {
    const std::string op = change.at("op").get<std::string>();
    const std::string kind = change.at("kind").get<std::string>();
    if (kind == "tunables" || kind == "ebpf") {
      // A section: the fields the change names replace the document's, the others stay.
      json& section = document_[kind];
      if (!section.is_object()) section = json::object();
      for (const auto& [key, value] : change.at("value").items()) section[key] = value;
      continue;
    }
    if (kind == "backend") {
      json& services = section("services", services_);
      auto it = services_.find(change.at("service").get<std::string>());
      if (it == services_.end()) continue;
      json& backends = services[it->second]["backends"];
      if (backends.is_null()) backends = json::array();
      const json& key = op == "remove" ? change : change.at("value");
      const std::string ip = key.at("ip").get<std::string>();
      const int port = key.at("port").get<int>();
      // Backends are few per service; the address text compares as the reader parsed it.
      const auto same = [&](const json& b) {
        auto a = ip_address::parse(b.at("ip").get<std::string>());
        auto k = ip_address::parse(ip);
        return a && k && *a == *k && b.at("port").get<int>() == port;
      };
      size_t at = 0;
      while (at < backends.size() && !same(backends[at])) ++at;
      if (op == "remove") {
        if (at < backends.size()) backends.erase(at);
      } else if (at < backends.size()) {
        backends[at] = change.at("value");
      } else {
        backends.push_back(change.at("value"));
      }
      continue;
    }
    const char* key = kind == "service" ? "services" : kind == "pod" ? "pods" : "nodes";
    name_index& index = kind == "service" ? services_ : kind == "pod" ? pods_ : nodes_;
    if (op == "remove") erase(key, index, change.at("name").get<std::string>());
    else put(key, index, change.at("value"));
  }
}

}  // namespace meshlane
