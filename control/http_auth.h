// Who may use the agent's HTTP surface when it is reachable from off the node: users with
// passwords (HTTP Basic, RFC 7617) from a password file, and bearer tokens (RFC 6750) from
// a token file. Both files are what a Kubernetes Secret volume holds; they are re-read when
// they change (at most once a second, on the next request), and a file that no longer
// reads is logged while the credentials already loaded stay in force.
//
//   password file: one "user:password" per line (split at the first ':', so a password may
//                  hold ':'; a user may not, RFC 7617 section 2); the password is the
//                  rest of the line as written, only a trailing CR is taken off.
//   token file:    one token per line (surrounding blanks taken off); several lines let a
//                  new token be rolled out before the old one is removed.
//   both:          empty lines and lines starting with '#' are skipped.
//
// Secrets are kept only as digests, and every comparison is of digests in constant time
// (see matches_any). Passwords are stored in the clear in the file, not as salted hashes:
// the check runs on the poll thread that also answers the probes, and a deliberately slow
// hash there would let a flood of wrong passwords starve them; the file is protected as the
// Secret it comes from (mode 0400, readable by the agent only).
#pragma once

#include <array>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "control/file_stamp.h"

namespace meshlane {

class log_ring;

// HMAC-SHA-256 of a secret under a key drawn at random once per process: every secret,
// whatever its length, becomes 32 bytes, and what stays in memory is not a plain hash of a
// password that a dictionary could reverse.
using secret_digest = std::array<unsigned char, 32>;
secret_digest digest_secret(std::string_view secret);

// Whether `presented` is one of the secrets behind `known`. `presented` is digested once,
// and its digest is compared with every entry by CRYPTO_memcmp, without stopping at a
// match: neither the presented length, nor where it first differs from a secret, nor
// which entry matched changes the work done.
bool matches_any(std::string_view presented, const std::vector<secret_digest>& known);

struct http_credential_files {
  std::string password_file;  // "" for none
  std::string token_file;     // "" for none
};

class http_credentials {
 public:
  // Reads the files (at least one must be given). "" in `error` or what is wrong, naming
  // the file and line; a secret never appears in a message.
  static std::unique_ptr<http_credentials> load(const http_credential_files& files, log_ring* log,
                                                std::string& error);

  // Whether a request whose Authorization header has this value (empty when absent) is
  // let in: "Basic <base64 user:password>" or "Bearer <token>", the scheme case-insensitive.
  // Re-reads a changed file first.
  bool admits(std::string_view authorization);
  // The WWW-Authenticate values a 401 carries (RFC 7235 section 4.1): Basic with a password
  // file, Bearer with a token file.
  std::vector<std::string> challenges() const;
  size_t users() const { return users_.size(); }
  size_t tokens() const { return tokens_.size(); }

 private:
  http_credentials(const http_credential_files& files, log_ring* log);
  std::string read_files(std::vector<secret_digest>& users,
                         std::vector<secret_digest>& tokens) const;
  void reload_if_changed();

  http_credential_files files_;
  log_ring* log_;
  file_change_check changes_;
  std::vector<secret_digest> users_;   // digests of "user:password"
  std::vector<secret_digest> tokens_;  // digests of tokens
};

}  // namespace meshlane
