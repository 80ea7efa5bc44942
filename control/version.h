// The version every binary reports (meson sets MESHLANE_VERSION from project()).
#pragma once

namespace meshlane {
#ifdef MESHLANE_VERSION
inline constexpr const char* kVersion = MESHLANE_VERSION;
#else
inline constexpr const char* kVersion = "unknown";
#endif
}  // namespace meshlane
