#include "control/http_auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "control/log_ring.h"

namespace meshlane {

namespace {

const std::array<unsigned char, 32>& digest_key() {
  // Should RAND_bytes ever fail, the comparison stays constant-time and correct with
  // whatever key is left; only the in-memory digests become plain keyed hashes.
  static const std::array<unsigned char, 32> key = [] {
    std::array<unsigned char, 32> k{};
    RAND_bytes(k.data(), static_cast<int>(k.size()));
    return k;
  }();
  return key;
}

bool starts_with_scheme(std::string_view value, std::string_view scheme) {
  if (value.size() <= scheme.size() || value[scheme.size()] != ' ') return false;
  for (size_t i = 0; i < scheme.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(value[i])) !=
        std::tolower(static_cast<unsigned char>(scheme[i])))
      return false;
  return true;
}

std::string_view trimmed(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r'))
    text.remove_suffix(1);
  return text;
}

// RFC 4648 base64 with padding, as RFC 7617 section 2 sends "user:password"; false for
// anything else.
bool base64_decode(std::string_view text, std::string& out) {
  if (text.empty() || text.size() % 4 != 0 || text.size() > 8192) return false;
  out.assign(text.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(text.data()),
                                static_cast<int>(text.size()));
  if (n < 0) return false;
  // EVP_DecodeBlock counts the padding's bytes as decoded zeros.
  size_t padding = 0;
  while (padding < 2 && text[text.size() - 1 - padding] == '=') ++padding;
  out.resize(static_cast<size_t>(n) - padding);
  return true;
}

bool read_whole(const std::string& path, std::string& text, std::string& error) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    error = "cannot read " + path + ": " + std::strerror(errno);
    return false;
  }
  std::ostringstream buffer;
  buffer << file.rdbuf();
  text = buffer.str();
  return true;
}

}  // namespace

secret_digest digest_secret(std::string_view secret) {
  secret_digest digest{};
  unsigned int length = 0;
  const auto& key = digest_key();
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(secret.data()), secret.size(), digest.data(),
       &length);
  return digest;
}

bool matches_any(std::string_view presented, const std::vector<secret_digest>& known) {
  const secret_digest digest = digest_secret(presented);
  int matched = 0;
  for (const auto& k : known) matched |= CRYPTO_memcmp(digest.data(), k.data(), digest.size()) == 0;
  return matched != 0;
}

http_credentials::http_credentials(const http_credential_files& files, log_ring* log)
    : files_(files), log_(log), changes_({files.password_file, files.token_file}) {}

std::unique_ptr<http_credentials> http_credentials::load(const http_credential_files& files,
                                                         log_ring* log, std::string& error) {
  if (files.password_file.empty() && files.token_file.empty()) {
    error = "no password file and no token file";
    return nullptr;
  }
  std::unique_ptr<http_credentials> credentials(new http_credentials(files, log));
  error = credentials->read_files(credentials->users_, credentials->tokens_);
  if (!error.empty()) return nullptr;
  return credentials;
}

std::string http_credentials::read_files(std::vector<secret_digest>& users,
                                         std::vector<secret_digest>& tokens) const {
  std::string error, text;
  for (const bool passwords : {true, false}) {
    const std::string& path = passwords ? files_.password_file : files_.token_file;
    if (path.empty()) continue;
    if (!read_whole(path, text, error)) return error;
    auto& into = passwords ? users : tokens;
    into.clear();
    std::istringstream lines(text);
    size_t number = 0;
    for (std::string line; std::getline(lines, line);) {
      ++number;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (trimmed(line).empty() || trimmed(line).front() == '#') continue;
      const std::string where = path + " line " + std::to_string(number);
      if (passwords) {
        // The line's content is not quoted in the message: it is a password.
        const size_t colon = line.find(':');
        if (colon == std::string::npos || colon == 0) return where + ": expected user:password";
        if (colon + 1 == line.size()) return where + ": the password is empty";
        into.push_back(digest_secret(line));
      } else {
        const std::string_view token = trimmed(line);
        if (token.find_first_of(" \t") != std::string_view::npos)
          return where + ": a token holds no blanks";
        into.push_back(digest_secret(token));
      }
    }
    if (into.empty())
      return path + (passwords ? " holds no user:password line" : " holds no token");
  }
  return "";
}

void http_credentials::reload_if_changed() {
  if (!changes_.changed()) return;
  changes_.remember();
  std::vector<secret_digest> users, tokens;
  if (std::string error = read_files(users, tokens); !error.empty()) {
    if (log_)
      log_->write(log_level::error,
                  "http credentials: " + error + "; the credentials loaded before stay");
    return;
  }
  users_ = std::move(users);
  tokens_ = std::move(tokens);
  if (log_)
    log_->write(log_level::info, "http credentials re-read: " + std::to_string(users_.size()) +
                                     " users, " + std::to_string(tokens_.size()) + " tokens");
}

bool http_credentials::admits(std::string_view authorization) {
  reload_if_changed();
  authorization = trimmed(authorization);
  if (!files_.password_file.empty() && starts_with_scheme(authorization, "Basic")) {
    std::string user_password;
    if (!base64_decode(trimmed(authorization.substr(6)), user_password)) return false;
    return matches_any(user_password, users_);
  }
  if (!files_.token_file.empty() && starts_with_scheme(authorization, "Bearer"))
    return matches_any(trimmed(authorization.substr(7)), tokens_);
  return false;
}

std::vector<std::string> http_credentials::challenges() const {
  std::vector<std::string> values;
  if (!files_.password_file.empty()) values.push_back("Basic realm=\"meshlane\"");
  if (!files_.token_file.empty()) values.push_back("Bearer realm=\"meshlane\"");
  return values;
}

}  // namespace meshlane
