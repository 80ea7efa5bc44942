#include "control/table_settings.h"

namespace meshlane {

const char* to_string(l4_protocol protocol) {
  return protocol == l4_protocol::tcp ? "tcp" : "udp";
}

const char* to_string(idle_policy policy) {
  return policy == idle_policy::busy_poll ? "busy_poll" : "adaptive";
}

const char* to_string(backend_series mode) {
  switch (mode) {
    case backend_series::used: return "used";
    case backend_series::all: return "all";
    case backend_series::off: return "off";
  }
  return "used";
}

const char* to_string(redirect_mode mode) {
  switch (mode) {
    case redirect_mode::automatic: return "auto";
    case redirect_mode::all: return "all";
    case redirect_mode::opt_in: return "opt_in";
    case redirect_mode::off: return "off";
  }
  return "?";
}

std::optional<redirect_mode> parse_redirect_mode(std::string_view text) {
  for (redirect_mode m : {redirect_mode::automatic, redirect_mode::all, redirect_mode::opt_in, redirect_mode::off})
    if (text == to_string(m)) return m;
  return std::nullopt;
}

const char* to_string(encryption_mode mode) {
  switch (mode) {
    case encryption_mode::off: return "off";
    case encryption_mode::always: return "always";
    case encryption_mode::per_route: return "per_route";
  }
  return "?";
}

}  // namespace meshlane
