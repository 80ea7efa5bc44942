// The control surface's error replies: {"ok":false,"error":"<code>","message":"<human text>"},
// with machine-readable codes a client can switch on.
#pragma once

#include <string>
#include <utility>

#include <nlohmann/json.hpp>

namespace meshlane {

// Machine-readable error codes a client can switch on.
namespace control_error {
inline constexpr const char* kInvalidJson = "invalid_json";
inline constexpr const char* kInvalidRequest = "invalid_request";
inline constexpr const char* kUnknownCommand = "unknown_command";
inline constexpr const char* kInvalidDocument = "invalid_document";
inline constexpr const char* kPublishFailed = "publish_failed";
inline constexpr const char* kUnknownTunable = "unknown_tunable";
inline constexpr const char* kInvalidValue = "invalid_value";
inline constexpr const char* kUnknownTable = "unknown_table";
inline constexpr const char* kUnavailable = "unavailable";
inline constexpr const char* kLineTooLong = "line_too_long";
inline constexpr const char* kPermissionDenied = "permission_denied";
inline constexpr const char* kTooManyClients = "too_many_clients";
inline constexpr const char* kInternal = "internal_error";
}  // namespace control_error

inline nlohmann::json error_reply(const char* code, std::string message) {
  return {{"ok", false}, {"error", code}, {"message", std::move(message)}};
}

}  // namespace meshlane
